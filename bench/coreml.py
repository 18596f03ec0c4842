"""Core ML: size of the compressed ``.mlpackage`` variants against the float32 package (same source model).

``fp16_size_ratio``, ``int8_size_ratio`` (``linear_quantize_weights``) and ``palettized4_size_ratio``
(4-bit k-means ``palettize_weights``) = float32 package bytes / variant package bytes, every file of the
package counted. Models: the demo's MNIST MLP and CNN (weights trained on 4000 real MNIST digits).
Accuracy and latency are not measured: Core ML predicts only on macOS; on a Mac this benchmark also
reports the top-1 agreement of each variant with PyTorch on 1000 held-out digits.

    python -m bench.coreml   ->   bench/results/coreml.json
"""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench._common import table, write
from edgewise.converters import _coreml, _data
from edgewise.demo import models

VARIANTS = ("fp32", "fp16", "int8-weight-only", "palettized4")


def _measure(name: str, module: torch.nn.Module, split: _data.ImageSplit, folder: Path) -> dict:
    sample = {"pixels": split.test_x[:1]}
    result: dict = {"model": name, "variants": {}}
    for variant in VARIANTS:
        path = folder / f"{name.split()[1].lower()}-{variant}.mlpackage"
        target = _coreml.deployment_target(variant, None)
        _coreml.export(module, sample, ["pixels"], ["logits"], path, variant=variant, target=target)
        checks = _coreml.checks(path, ["pixels"], ["logits"], variant, target)["checked"]
        row = {"size_bytes": _coreml.tree_size(path), "deployment_target": target, "weight_ops": checks["weight_ops"]}
        if platform.system() == "Darwin":
            from edgewise import device_runtime

            model = device_runtime.load(path)
            with torch.no_grad():
                ref = module(torch.from_numpy(split.test_x)).argmax(1).numpy()
            got = np.concatenate([model.run({"pixels": split.test_x[i:i + 1]})["logits"]
                                  for i in range(len(split.test_x))]).argmax(1)
            row["top1_agreement"] = float((got == ref).mean())
        result["variants"][variant] = row
    base = result["variants"]["fp32"]["size_bytes"]
    for row in result["variants"].values():
        row["size_ratio"] = base / row["size_bytes"]
    return result


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    split = _data.builtin_images("mnist")
    mlp = models.train_classifier(models.build(), split.train_x, split.train_y, epochs=3, lr=1e-3, log=lambda _: None)
    cnn = models.train_classifier(models.build_cnn(), split.train_x, split.train_y, epochs=2, lr=2e-3,
                                  log=lambda _: None)
    with tempfile.TemporaryDirectory() as tmp:
        results = [_measure("MNIST MLP 784-512-512-10", mlp, split, Path(tmp)),
                   _measure("MNIST CNN (demo DigitsCNN)", cnn, split, Path(tmp))]
    rows = [[r["model"], v, x["size_bytes"] / 1e3, x["size_ratio"], x["deployment_target"]]
            for r in results for v, x in r["variants"].items()]
    print(table(rows, ["model", "variant", "kB", "x smaller than fp32", "deployment target"]))
    import coremltools

    head = results[0]["variants"]
    write("coreml", {
        "engine": f"coremltools {coremltools.__version__} (ML program .mlpackage)",
        "headline": "MNIST MLP (weights dominate the package)",
        "fp16_size_ratio": head["fp16"]["size_ratio"],
        "int8_size_ratio": head["int8-weight-only"]["size_ratio"],
        "palettized4_size_ratio": head["palettized4"]["size_ratio"],
        "accuracy_measured": platform.system() == "Darwin",
        "note": "sizes count every file of the package; accuracy/latency need macOS (Core ML predicts only there)",
        "models": results,
    })


if __name__ == "__main__":
    main()
