"""Core ML backend: ``.mlpackage`` / ``.mlmodel`` through coremltools, which predicts only on macOS.

The runtime's device choice maps to Core ML's ``compute_units``: "npu" -> CPU_AND_NE (the Neural
Engine), "gpu" -> CPU_AND_GPU, "cpu" -> CPU_ONLY; "all" (by name) lets Core ML choose. Core ML
itself runs unsupported layers on the CPU inside one prediction, so a placement here says what
was *allowed*, not which unit ran each layer.

On any other platform ``accelerators()`` raises BackendUnavailableError naming the need (so
``load`` fails clearly, before trying anything); ``inspect`` still reads the spec (names, shapes,
dtypes, weight precision) so CI on Linux can check what it converted. Nothing fakes a prediction.
"""

from __future__ import annotations

import platform
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.bundle import Signature, TensorSpec
from edgewise.device_runtime._backend import LoadOptions
from edgewise.device_runtime._placement import Accelerator
from edgewise.errors import ArtifactError, BackendUnavailableError, InferenceError

# Core ML array data types (ArrayFeatureType.ArrayDataType) -> manifest dtype names.
_ARRAY_TYPES = {65568: "float32", 65600: "float64", 65552: "float16", 131104: "int32", 131080: "int8"}
COMPUTE_UNITS = (
    # (compute unit, kind, alias, picked by "auto")
    ("CPU_AND_NE", "npu", "ane", True),
    ("CPU_AND_GPU", "gpu", "metal", True),
    ("ALL", "npu", "all", False),
    ("CPU_ONLY", "cpu", "cpu", True),
)


def can_predict(system: str | None = None) -> bool:
    """Core ML's runtime exists only on Apple platforms (coremltools' predict needs macOS)."""
    return (system or platform.system()) == "Darwin"


def platform_error(system: str | None = None) -> BackendUnavailableError:
    system = system or f"{platform.system()} {platform.machine()}"
    return BackendUnavailableError(
        f"Core ML models run only on macOS (Apple's Core ML framework); this machine is {system}",
        hint="Run this bundle on a Mac or an Apple device; here, `edgewise inspect` reads it, and the recipe's "
             "tflite/onnx targets run on this machine.",
    )


class CoreMLBackend:
    name = "coremltools"
    formats = ("coreml",)

    def version(self) -> str:
        import coremltools

        return coremltools.__version__

    def accelerators(self) -> list[Accelerator]:
        if not can_predict():
            raise platform_error()
        return [Accelerator(self.name, unit, kind, alias, auto=auto) for unit, kind, alias, auto in COMPUTE_UNITS]

    def inspect(self, path: Path) -> dict[str, Any]:
        """Signature and weight precision from the spec, on any platform (no prediction)."""
        spec = _load_spec(path)
        return {"signature": _signature(spec), **describe_spec(spec)}

    def open(self, path: Path, accelerator: Accelerator, options: LoadOptions) -> CoreMLSession:
        import coremltools as ct

        spec = _load_spec(path)  # a corrupt package fails here, as ArtifactError, on every platform
        model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit[accelerator.name])
        return CoreMLSession(model, _signature(spec), accelerator.name)


class CoreMLSession:
    """An MLModel. ``predict`` is not documented as thread-safe, so calls are serialised."""

    def __init__(self, model: Any, signature: Signature, accelerator: str) -> None:
        self._model = model
        self.signature = signature
        self.accelerator = accelerator
        self._lock = threading.Lock()

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            with self._lock:
                out = self._model.predict(feed)
        except Exception as exc:
            raise InferenceError(f"Core ML failed to run the model: {str(exc).strip()[:300]}") from exc
        return {spec.name: np.asarray(out[spec.name]) for spec in self.signature.outputs}

    def close(self) -> None:
        self._model = None


def _load_spec(path: Path) -> Any:
    import coremltools as ct

    if path.is_dir() and not (path / "Manifest.json").is_file():
        raise ArtifactError(f"{path.name} is not a Core ML package: it has no Manifest.json")
    try:
        return ct.utils.load_spec(str(path))
    except Exception as exc:  # protobuf DecodeError, JSON errors, missing model file: all "cannot read"
        text = str(exc).strip().splitlines()
        raise ArtifactError(f"coremltools cannot read {path.name}: {(text[0] if text else type(exc).__name__)[:300]}"
                            ) from exc


def _signature(spec: Any) -> Signature:
    def tensors(features: Any) -> tuple[TensorSpec, ...]:
        out = []
        for feature in features:
            array = feature.type.multiArrayType
            dtype = _ARRAY_TYPES.get(array.dataType, "float32")
            shape: list[int | str] = [int(d) for d in array.shape]
            ranges = array.shapeRange.sizeRanges
            for i, size_range in enumerate(ranges):
                if size_range.upperBound != size_range.lowerBound and i < len(shape):
                    shape[i] = "batch" if i == 0 else f"d{i}"
            out.append(TensorSpec(feature.name, dtype, tuple(shape)))
        return tuple(out)

    return Signature(inputs=tensors(spec.description.input), outputs=tensors(spec.description.output))


def describe_spec(spec: Any) -> dict[str, Any]:
    """What can be checked without running: spec version, model type, weight storage by op kind."""
    kind = spec.WhichOneof("Type")
    ops: dict[str, int] = {}
    if kind == "mlProgram":
        for function in spec.mlProgram.functions.values():
            for block in function.block_specializations.values():
                for op in block.operations:
                    if op.type.startswith("constexpr_") or op.type == "const":
                        ops[op.type] = ops.get(op.type, 0) + 1
    return {"specification_version": int(spec.specificationVersion), "model_type": kind, "weight_ops": ops}
