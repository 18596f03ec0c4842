"""Tiny real bundles for sync tests, benchmarks and demos: an exported ONNX model, its sample, a manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgewise import device_runtime
from edgewise.bundle import BundleBuilder, Manifest, Quantization, Source

SAMPLE_X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)  # the stored sample input of every such bundle


def make_bundle(folder: Path, name: str, version: str, *, seed: int, padding_bytes: int = 0,
                wrong_sample: bool = False) -> Path:
    """A tiny ONNX regression model as a verified bundle, optionally padded to a given size.

    ``wrong_sample`` stores an expected output the model does not produce: a bundle that is intact
    on disk but must fail the post-install check.
    """
    import torch

    from edgewise.converters._torch_export import export_torch_to_onnx

    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    onnx_path = folder / f"{name}-{version}.onnx"
    export_torch_to_onnx(module, [np.zeros((2, 4), np.float32)], onnx_path, input_names=["x"], output_names=["y"])
    model = device_runtime.load(onnx_path)
    expected = model.run({"x": SAMPLE_X})["y"]
    builder = BundleBuilder()
    builder.add_file(onnx_path, "model.onnx")
    builder.add_sample({"x": SAMPLE_X}, {"y": expected + 1.0 if wrong_sample else expected})
    if padding_bytes:
        builder.add_bytes(np.random.default_rng(seed).bytes(padding_bytes), "extra/padding.bin", role="extra")
    manifest = Manifest(
        name=name, version=version, format="onnx", task="regression", entrypoint="model.onnx", files=(),
        signature=model.signature, quantization=Quantization(), source=Source("onnx", "sha256:" + "0" * 64),
        edgewise_version="",
    )
    return builder.write(folder / f"bundle-{name}-{version}", manifest).root
