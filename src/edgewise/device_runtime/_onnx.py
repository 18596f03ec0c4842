"""ONNX backend on onnxruntime: execution-provider probing, session creation, signature.

onnxruntime silently drops a provider it cannot initialise (CUDA without a driver, say)
and runs on the CPU; we compare what we asked for with ``get_providers()`` and report the
difference as a failed attempt, so ``Placement`` never claims an accelerator that did not run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgewise.bundle import Signature, TensorSpec
from edgewise.device_runtime._backend import LoadOptions
from edgewise.device_runtime._placement import Accelerator
from edgewise.errors import ArtifactError, InferenceError

# provider -> (kind, alias, picked by "auto"). Order within a kind follows onnxruntime's own
# priority (get_available_providers lists best first).
_PROVIDERS: dict[str, tuple[str, str, bool]] = {
    "TensorrtExecutionProvider": ("gpu", "tensorrt", True),
    "NvTensorRTRTXExecutionProvider": ("gpu", "tensorrt_rtx", True),
    "CUDAExecutionProvider": ("gpu", "cuda", True),
    "ROCMExecutionProvider": ("gpu", "rocm", True),
    "MIGraphXExecutionProvider": ("gpu", "migraphx", True),
    "DmlExecutionProvider": ("gpu", "directml", True),
    "WebGpuExecutionProvider": ("gpu", "webgpu", True),
    "CoreMLExecutionProvider": ("npu", "coreml", True),
    "QNNExecutionProvider": ("npu", "qnn", True),
    "NnapiExecutionProvider": ("npu", "nnapi", True),
    "VitisAIExecutionProvider": ("npu", "vitisai", True),
    # OpenVINO targets CPU/GPU/NPU by option and XNNPACK is tuned for Arm: both run when
    # named, neither is a safe default on an unknown x86 machine.
    "OpenVINOExecutionProvider": ("npu", "openvino", False),
    "XnnpackExecutionProvider": ("cpu", "xnnpack", False),
    "CPUExecutionProvider": ("cpu", "cpu", True),
}
# Providers that do not run models locally.
_IGNORED = {"AzureExecutionProvider"}

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(int16)": "int16", "tensor(uint16)": "uint16", "tensor(int32)": "int32",
    "tensor(uint32)": "uint32", "tensor(int64)": "int64", "tensor(uint64)": "uint64",
    "tensor(bool)": "bool", "tensor(string)": "string",
}


class OnnxRuntimeBackend:
    name = "onnxruntime"
    formats = ("onnx",)

    def version(self) -> str:
        return ort.__version__

    def accelerators(self) -> list[Accelerator]:
        found = []
        for provider in ort.get_available_providers():
            if provider in _IGNORED:
                continue
            unknown = ("gpu", provider.removesuffix("ExecutionProvider").lower(), False)
            kind, alias, auto = _PROVIDERS.get(provider, unknown)
            found.append(Accelerator(backend=self.name, name=provider, kind=kind, alias=alias, auto=auto))
        if not any(a.name == "CPUExecutionProvider" for a in found):
            found.append(Accelerator(backend=self.name, name="CPUExecutionProvider", kind="cpu", alias="cpu"))
        return found

    def open(self, path: Path, accelerator: Accelerator, options: LoadOptions) -> OnnxSession:
        if accelerator.name not in ort.get_available_providers():
            raise RuntimeError(f"this onnxruntime build has no {accelerator.name}")
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.threads:
            session_options.intra_op_num_threads = options.threads
        session_options.log_severity_level = 3  # errors only: fallbacks are reported by edgewise
        providers: list = [accelerator.name]
        provider_options = options.engine_options.get(accelerator.name)
        if provider_options:
            providers = [(accelerator.name, provider_options)]
        if accelerator.name != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")  # for the nodes the accelerator does not take
        try:
            session = ort.InferenceSession(str(path), sess_options=session_options, providers=providers)
        except Exception as exc:
            text = str(exc)
            if _is_unreadable_model(text):
                raise ArtifactError(f"onnxruntime cannot read {path.name}: {_first_line(text)}") from exc
            raise
        used = session.get_providers()
        if accelerator.name not in used:
            raise RuntimeError(f"onnxruntime did not enable {accelerator.name} (it would run on {used[0]})")
        return OnnxSession(session, accelerator.name)


class OnnxSession:
    """One InferenceSession; InferenceSession.run is thread-safe, and so is this."""

    __slots__ = ("_output_names", "_run", "_session", "_single_output", "accelerator", "signature")

    def __init__(self, session: ort.InferenceSession, accelerator: str) -> None:
        self._session = session
        self.accelerator = accelerator
        self.signature = Signature(
            inputs=tuple(_spec(arg) for arg in session.get_inputs()),
            outputs=tuple(_spec(arg) for arg in session.get_outputs()),
        )
        self._output_names = [spec.name for spec in self.signature.outputs]
        self._single_output = self._output_names[0] if len(self._output_names) == 1 else None
        # InferenceSession.run (Python) re-checks input names through pybind on every call
        # (~1-2 µs); edgewise has already validated names, dtypes and shapes, so it calls the
        # C++ binding underneath when this onnxruntime has it, the public method otherwise.
        inner = getattr(session, "_sess", None)
        self._run = inner.run if inner is not None and callable(getattr(inner, "run", None)) else session.run

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._run(self._output_names, feed, None)
        except Exception as exc:
            raise InferenceError(f"onnxruntime failed to run the model: {_first_line(str(exc))}") from exc
        if self._single_output is not None:
            return {self._single_output: values[0]}
        return dict(zip(self._output_names, values, strict=False))

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]


def _spec(arg: ort.NodeArg) -> TensorSpec:
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        raise ArtifactError(f"model input/output {arg.name!r} has type {arg.type}, which edgewise does not support")
    shape = tuple(
        dim if isinstance(dim, int) and dim >= 0 else (dim if isinstance(dim, str) and dim else f"d{i}")
        for i, dim in enumerate(arg.shape or ())
    )
    return TensorSpec(name=arg.name, dtype=dtype, shape=shape)


def _is_unreadable_model(text: str) -> bool:
    markers = ("INVALID_PROTOBUF", "Protobuf parsing failed", "Load model from", "INVALID_GRAPH", "ModelProto")
    return any(marker in text for marker in markers)


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line[:300]
