"""The LiteRT backend on the real ai-edge-litert Interpreter, with .tflite files made by litert-torch here."""

from __future__ import annotations

import ctypes.util
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("litert_torch")
torch = pytest.importorskip("torch")

from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from edgewise import device_runtime  # noqa: E402
from edgewise.device_runtime import Accelerator, register_backend  # noqa: E402
from edgewise.device_runtime._litert import LiteRTBackend, find_delegates  # noqa: E402
from edgewise.errors import ArtifactError, InputError, PlacementError  # noqa: E402


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()


@pytest.fixture(scope="module")
def float_tflite(tmp_path_factory, mlp) -> Path:
    from edgewise.converters._tflite import export_float

    path = tmp_path_factory.mktemp("tfl") / "mlp.tflite"
    return export_float(mlp, {"x": np.zeros((1, 16), np.float32)}, ["x"], ["y"], path)


@pytest.fixture(scope="module")
def int8_tflite(tmp_path_factory, mlp) -> Path:
    from edgewise.converters._tflite import quantize_static_int8

    rng = np.random.default_rng(0)
    calibration = [{"x": rng.normal(size=(16, 16)).astype(np.float32)} for _ in range(4)]
    path = tmp_path_factory.mktemp("tfl8") / "mlp-int8.tflite"
    quantize_static_int8(mlp, calibration, ["x"], ["y"], path)
    return path


def _raw(path: Path, x: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_float_model_runs_like_the_raw_interpreter_and_torch(float_tflite, mlp):
    model = device_runtime.load(float_tflite)
    x = np.random.default_rng(1).normal(size=(1, 16)).astype(np.float32)
    ours = model.run({"x": x})["y"]
    np.testing.assert_array_equal(ours, _raw(float_tflite, x))
    np.testing.assert_allclose(ours, mlp(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
    assert model.backend == "litert" and model.device == "cpu" and model.accelerator == "XNNPACK"
    assert [s.name for s in model.signature.inputs] == ["x"]  # the recipe's names, not args_0
    assert model.signature.outputs[0].name == "y"


def test_a_batch_runs_sample_by_sample_on_a_batch1_model(float_tflite, mlp):
    model = device_runtime.load(float_tflite)
    assert model.signature.inputs[0].shape == ("batch", 16)
    x = np.random.default_rng(2).normal(size=(5, 16)).astype(np.float32)
    out = model.run(x)["y"]
    assert out.shape == (5, 4)
    np.testing.assert_array_equal(out[3:4], model.run(x[3:4])["y"])
    np.testing.assert_allclose(out, mlp(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_int8_io_is_scaled_for_the_caller_unless_raw_is_asked(int8_tflite, mlp):
    raw_details = Interpreter(model_path=str(int8_tflite)).get_input_details()[0]
    assert raw_details["dtype"] == np.int8  # PT2E static: int8 input tensor in the file
    model = device_runtime.load(int8_tflite)
    assert model.signature.inputs[0].dtype == "float32" and model.signature.outputs[0].dtype == "float32"
    x = np.random.default_rng(3).normal(size=(8, 16)).astype(np.float32)
    out = model.run({"x": x})["y"]
    ref = mlp(torch.from_numpy(x)).detach().numpy()
    assert out.dtype == np.float32
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.75
    raw = device_runtime.load(int8_tflite, engine_options={"raw_quantized_io": True})
    assert raw.signature.inputs[0].dtype == "int8"
    scale, zero = raw_details["quantization"]
    q = np.clip(np.round(x[:1] / scale) + zero, -128, 127).astype(np.int8)
    assert raw.run({"x": q})["y"].dtype == np.int8
    np.testing.assert_array_equal(raw.run({"x": q})["y"], _raw(int8_tflite, q))


def test_threads_and_concurrent_runs(float_tflite):
    model = device_runtime.load(float_tflite, threads=2)
    xs = [np.full((3, 16), i, np.float32) for i in range(16)]
    expected = [model.run(x)["y"] for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: model.run(x)["y"], xs))
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_wrong_input_is_an_input_error(float_tflite):
    model = device_runtime.load(float_tflite)
    with pytest.raises(InputError, match="16"):
        model.run(np.zeros((1, 15), np.float32))
    with pytest.raises(InputError, match="float32"):
        model.run(np.zeros((1, 16), np.float64))


def test_prepared_requests_go_straight_to_the_engine_and_others_are_still_checked(float_tflite):
    """``Model.run`` of a plain LiteRT model is the session's engine runner: an array of the tensor's
    dtype and prepared shape skips validation; everything else must behave as the checked path."""
    from edgewise.device_runtime._model import Model

    model = device_runtime.load(float_tflite)
    assert model.run is not Model.run and callable(model.run)
    checked = lambda inputs: Model.run(model, inputs)  # noqa: E731 - validation, then the session's run
    x = np.random.default_rng(6).normal(size=(1, 16)).astype(np.float32)
    ref = _raw(float_tflite, x)
    for request in ({"x": x}, x, [x], (x,)):
        np.testing.assert_array_equal(model.run(request)["y"], ref)
    batch = np.random.default_rng(7).normal(size=(3, 16)).astype(np.float32)
    np.testing.assert_array_equal(model.run(batch)["y"], checked(batch)["y"])  # engine refuses; split
    np.testing.assert_array_equal(model.run({"x": x})["y"], ref)  # the interpreter is still prepared
    with pytest.raises(InputError, match="unexpected"):
        model.run({"x": x, "z": x})
    with pytest.raises(InputError, match="dtype"):
        model.run({"x": x.astype(">f4")})  # LiteRT's own check would take these bytes as they are
    with pytest.raises(InputError, match="dimension 1 must be 16"):
        model.run(np.zeros((1, 15), np.float32))
    with pytest.raises(InputError, match="missing"):
        model.run({"y": x})


@pytest.mark.parametrize("damage", ["random", "truncated", "empty-header"])
def test_corrupt_tflite_is_an_artifact_error(tmp_path, float_tflite, damage):
    data = float_tflite.read_bytes()
    bad = tmp_path / "bad.tflite"
    if damage == "random":
        bad.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        bad.write_bytes(data[: len(data) // 3])
    else:
        bad.write_bytes(data[:8])
    with pytest.raises(ArtifactError, match=r"bad\.tflite"):
        device_runtime.load(bad)


def _libc() -> str:
    return ctypes.util.find_library("c") or "libc.so.6"


class _WithBogusDelegate(LiteRTBackend):
    """The real engine, with a 'GPU delegate' that is a real shared library but no delegate (libc)."""

    def accelerators(self):
        return [Accelerator("litert", "libc-gpu", "gpu", "gpu_delegate", detail=_libc()), *super().accelerators()]


@pytest.fixture
def bogus_delegate():
    register_backend("tflite", _WithBogusDelegate)
    yield
    register_backend("tflite", LiteRTBackend)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the engine's Delegate.__del__
def test_a_delegate_that_fails_to_load_falls_back_to_xnnpack_and_says_so(float_tflite, bogus_delegate):
    model = device_runtime.load(float_tflite, device="auto")
    assert model.device == "cpu" and model.accelerator == "XNNPACK"
    assert model.placement.fallbacks[0].accelerator == "gpu_delegate"
    assert "delegate" in model.placement.fallbacks[0].reason.lower()
    assert model.run(np.zeros((1, 16), np.float32))["y"].shape == (1, 4)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_strict_refuses_the_failing_delegate(float_tflite, bogus_delegate):
    with pytest.raises(PlacementError, match="gpu_delegate"):
        device_runtime.load(float_tflite, device="gpu", strict=True)


def test_no_gpu_here_falls_back_with_a_reason(float_tflite):
    model = device_runtime.load(float_tflite, device="gpu")
    assert model.device == "cpu"
    assert "no such accelerator" in model.placement.fallbacks[0].reason


def test_find_delegates_reads_known_names_and_the_environment(tmp_path):
    (tmp_path / "libedgetpu.so.1").write_bytes(b"\x7fELF")
    found = find_delegates(search_dirs=(str(tmp_path),), env=os.pathsep.join([str(tmp_path / "libmy_npu.so")]))
    assert [(a.alias, a.kind) for a in found] == [("edgetpu", "npu"), ("my_npu", "gpu")]


def test_inspect_file_reads_the_signature(int8_tflite):
    info = device_runtime.inspect_file(int8_tflite)
    assert info["format"] == "tflite" and info["signature"].inputs[0].name == "x"


def test_non_contiguous_input_and_the_engines_own_invoke_still_work(float_tflite):
    model = device_runtime.load(float_tflite)
    wide = np.random.default_rng(5).normal(size=(1, 32)).astype(np.float32)
    np.testing.assert_array_equal(model.run(wide[:, ::2])["y"], model.run(np.ascontiguousarray(wide[:, ::2]))["y"])
    interpreter = model._session._interp  # edgewise keeps no reference that trips Interpreter.invoke's check
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], wide[:, :16])
    interpreter.invoke()


def test_the_litert_backend_runs_without_any_conversion_library(float_tflite):
    """A device app ships ai-edge-litert, not torch / litert-torch / TensorFlow."""
    import subprocess
    import sys

    code = f"""
import sys
for blocked in ("torch", "onnx", "litert_torch", "ai_edge_quantizer", "tensorflow", "coremltools", "jax"):
    sys.modules[blocked] = None
import numpy as np
import edgewise.device_runtime as dr
print(dr.load({str(float_tflite)!r}).run({{"x": np.ones((3, 16), np.float32)}})["y"].shape)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "(3, 4)"


def test_an_observed_litert_model_runs_through_its_engine_runner(float_tflite, hot_path):
    """Observation wraps ``model.run`` itself, so a LiteRT model keeps its engine runner; sampled
    requests are put in dict form for the log, whatever form they came in."""
    from edgewise.device_runtime import Metrics, observed

    model = device_runtime.load(float_tflite)
    watched = observed(model, metrics=Metrics(), sample_rate=1.0)
    assert model._pipeline() == (None, model.run)  # no validation in front of the runner
    assert watched.run.engine_run is model.run
    x = np.random.default_rng(8).normal(size=(1, 16)).astype(np.float32)
    for request in (x, {"x": x}, [x]):
        np.testing.assert_array_equal(watched.run(request)["y"], _raw(float_tflite, x))
    watched.flush()
    assert watched.sampled == 3 and watched.snapshot()["metrics"]["requests"] == 3
    watched.close()
