"""The ONNX backend on the real onnxruntime: load, run, placement, fallback, bad files, threads."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgewise import device_runtime
from edgewise.device_runtime import Accelerator, register_backend
from edgewise.device_runtime._onnx import OnnxRuntimeBackend
from edgewise.errors import ArtifactError, BundleNotFoundError, InputError, PlacementError


def test_load_file_runs_like_raw_onnxruntime(mlp_onnx):
    model = device_runtime.load(mlp_onnx)
    x = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    ours = model.run({"x": x})["y"]
    raw = ort.InferenceSession(str(mlp_onnx), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(ours, raw)
    assert model.backend == "onnxruntime" and model.device == "cpu"
    assert model.accelerator == "CPUExecutionProvider"
    assert model.signature.inputs[0].shape == ("batch", 16)
    assert not model.placement.fell_back


def test_strict_gpu_on_a_cpu_machine_is_refused(mlp_onnx):
    with pytest.raises(PlacementError, match="GPU"):
        device_runtime.load(mlp_onnx, device="gpu", strict=True)


def test_gpu_request_on_a_cpu_machine_falls_back_and_says_so(mlp_onnx):
    model = device_runtime.load(mlp_onnx, device="gpu")
    assert model.device == "cpu"
    assert model.placement.fallbacks[0].accelerator == "gpu"
    assert "no such accelerator" in model.placement.fallbacks[0].reason


def test_cpu_only_request(mlp_onnx):
    assert device_runtime.load(mlp_onnx, device="cpu").placement.accelerator == "CPUExecutionProvider"


class _ClaimsCuda(OnnxRuntimeBackend):
    """The real engine, with a probe that reports CUDA — as onnxruntime-gpu does on a machine without a driver."""

    def accelerators(self):
        return [Accelerator(self.name, "CUDAExecutionProvider", "gpu", "cuda"), *super().accelerators()]


@pytest.fixture
def cuda_claiming_backend():
    register_backend("onnx", _ClaimsCuda)
    yield
    register_backend("onnx", OnnxRuntimeBackend)


def test_failing_accelerator_falls_back_to_cpu_and_says_why(mlp_onnx, cuda_claiming_backend):
    model = device_runtime.load(mlp_onnx, device="auto")
    assert model.accelerator == "CPUExecutionProvider"
    assert model.placement.fell_back
    attempt = model.placement.fallbacks[0]
    assert attempt.accelerator == "cuda" and "CUDAExecutionProvider" in attempt.reason
    assert "falling back from [cuda" in model.placement.describe()


def test_failing_accelerator_in_strict_mode_raises(mlp_onnx, cuda_claiming_backend):
    with pytest.raises(PlacementError, match="could not be placed on device='cuda' \\(strict\\)"):
        device_runtime.load(mlp_onnx, device="cuda", strict=True)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated
        lambda data: bytes(range(256)) * 8,  # random bytes
        lambda data: b"",  # empty
    ],
    ids=["truncated", "garbage", "empty"],
)
def test_corrupt_onnx_files_raise_artifact_error(mlp_onnx, tmp_path, damage):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(damage(mlp_onnx.read_bytes()))
    with pytest.raises(ArtifactError, match="bad.onnx"):
        device_runtime.load(bad)


def test_unknown_file_type_and_missing_path(tmp_path):
    weird = tmp_path / "model.bin"
    weird.write_bytes(b"1234")
    with pytest.raises(ArtifactError, match="cannot tell the model format"):
        device_runtime.load(weird)
    with pytest.raises(BundleNotFoundError, match="does not exist"):
        device_runtime.load(tmp_path / "nope.onnx")


def test_wrong_inputs_are_input_errors(mlp_onnx):
    model = device_runtime.load(mlp_onnx)
    with pytest.raises(InputError, match="float64"):
        model.run({"x": np.zeros((1, 16))})
    with pytest.raises(InputError, match="dimension 1 must be 16"):
        model.run({"x": np.zeros((1, 15), np.float32)})
    with pytest.raises(InputError, match="unexpected"):
        model.run({"x": np.zeros((1, 16), np.float32), "z": np.zeros(1)})


def test_many_threads_get_the_same_answers(mlp_onnx):
    model = device_runtime.load(mlp_onnx, threads=1)
    rng = np.random.default_rng(3)
    batches = [rng.normal(size=(4, 16)).astype(np.float32) for _ in range(64)]
    expected = [model.run(b)["y"] for b in batches]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda b: model.run(b)["y"], batches * 4))
    for i, got in enumerate(results):
        np.testing.assert_array_equal(got, expected[i % len(batches)])


def test_probe_lists_onnxruntime_with_cpu():
    report = device_runtime.probe()
    onnx_row = next(b for b in report.backends if b.format == "onnx")
    assert onnx_row.installed and onnx_row.version == ort.__version__
    assert any(a.kind == "cpu" and a.auto for a in onnx_row.accelerators)


def test_device_runtime_imports_no_conversion_library(mlp_onnx):
    """Apps embed the runtime: it must import and run with torch/onnx/optimum absent."""
    code = f"""
import sys
for blocked in ("torch", "onnx", "optimum", "transformers", "onnxscript", "sklearn"):
    sys.modules[blocked] = None  # any import of these now raises ImportError
import numpy as np
import edgewise.device_runtime as dr
model = dr.load({str(mlp_onnx)!r})
print(model.run({{"x": np.ones((1, 16), np.float32)}})["y"].shape)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 4)"


def test_loading_a_bundle_verifies_it(tmp_path, mlp_onnx):
    from edgewise.bundle import BundleBuilder, Manifest, Quantization, Source

    model = device_runtime.load(mlp_onnx)
    x = np.ones((2, 16), np.float32)
    builder = BundleBuilder()
    builder.add_file(mlp_onnx, "model.onnx")
    builder.add_sample({"x": x}, model.run(x))
    bundle = builder.write(tmp_path / "b", Manifest(
        name="mlp", version="1", format="onnx", task="regression", entrypoint="model.onnx", files=(),
        signature=model.signature, quantization=Quantization(), edgewise_version="",
        source=Source("onnx", "sha256:" + "0" * 64),
    ))
    loaded = device_runtime.load(bundle.root)
    assert loaded.bundle is not None and loaded.bundle.manifest.name == "mlp"
    model_file: Path = bundle.root / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[:-8] + b"\0" * 8)
    from edgewise.errors import IntegrityError

    with pytest.raises(IntegrityError, match="model.onnx"):
        device_runtime.load(bundle.root)
