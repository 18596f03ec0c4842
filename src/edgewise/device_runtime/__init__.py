"""Run a bundle or model file on the best hardware this device has, and say which ran it.

    model = edgewise.device_runtime.load("dist/digits-int8", device="auto")
    outputs = model.run({"pixels": batch})
    model.placement.describe()   # "onnxruntime on cpu (CPUExecutionProvider)"

Embedded in device apps: this package imports no conversion library and no engine until a
model of that format is loaded (``pip install edgewise[onnx]`` is enough for ONNX).
"""

from edgewise.device_runtime._backend import Backend, LoadOptions, Session, known_formats, register_backend
from edgewise.device_runtime._devices import BackendReport, DeviceReport, probe
from edgewise.device_runtime._inputs import InputValidator
from edgewise.device_runtime._inspect import inspect_file
from edgewise.device_runtime._model import Model, detect_format, load
from edgewise.device_runtime._placement import Accelerator, Attempt, Placement, rank

__all__ = [
    "Accelerator",
    "Attempt",
    "Backend",
    "BackendReport",
    "DeviceReport",
    "InputValidator",
    "LoadOptions",
    "Model",
    "Placement",
    "Session",
    "detect_format",
    "inspect_file",
    "known_formats",
    "load",
    "probe",
    "rank",
    "register_backend",
]
