"""Run a bundle or model file on the best hardware this device has, and say which ran it.

    model = edgewise.device_runtime.load("dist/digits-int8", device="auto")
    outputs = model.run({"pixels": batch})
    model.placement.describe()   # "onnxruntime on cpu (CPUExecutionProvider)"

Observation (metrics, sampled prediction log, drift, shadow) is opt-in per model and leaves
``Model.run`` untouched when off::

    watched = edgewise.device_runtime.observed(model, directory=store_root / "observe", sample_rate=0.01)
    watched.run(batch); watched.metrics.prometheus_text(); watched.snapshot()

Embedded in device apps: this package imports no conversion library and no engine until a
model of that format is loaded (``pip install edgewise[onnx]`` is enough for ONNX).
"""

from edgewise.device_runtime._backend import Backend, LoadOptions, Session, known_formats, register_backend
from edgewise.device_runtime._devices import BackendReport, DeviceReport, probe, usable_cores
from edgewise.device_runtime._drift import DriftMonitor, DriftStatus, build_reference, psi
from edgewise.device_runtime._gguf_check import GgufInfo, read_gguf_info
from edgewise.device_runtime._inputs import InputValidator
from edgewise.device_runtime._inspect import inspect_file
from edgewise.device_runtime._metrics import Metrics, default_metrics, record_fallback
from edgewise.device_runtime._model import Model, detect_format, load
from edgewise.device_runtime._observe import ObserveConfig, ObservedModel, observed
from edgewise.device_runtime._placement import Accelerator, Attempt, Placement, rank
from edgewise.device_runtime._predlog import PredictionLog
from edgewise.device_runtime._shadow import PromotionDecision, PromotionPolicy, decide_promotion
from edgewise.device_runtime._text import Completion, TextModel, TextStream

__all__ = [
    "Accelerator",
    "Attempt",
    "Backend",
    "BackendReport",
    "Completion",
    "DeviceReport",
    "DriftMonitor",
    "DriftStatus",
    "GgufInfo",
    "InputValidator",
    "LoadOptions",
    "Metrics",
    "Model",
    "ObserveConfig",
    "ObservedModel",
    "Placement",
    "PredictionLog",
    "PromotionDecision",
    "PromotionPolicy",
    "Session",
    "TextModel",
    "TextStream",
    "build_reference",
    "decide_promotion",
    "default_metrics",
    "detect_format",
    "inspect_file",
    "known_formats",
    "load",
    "observed",
    "probe",
    "psi",
    "rank",
    "read_gguf_info",
    "record_fallback",
    "register_backend",
    "usable_cores",
]
