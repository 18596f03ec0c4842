"""``load``: find the artifact, try accelerators in ranked order, warm up, return a ``Model``."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.bundle import Bundle, Signature
from edgewise.device_runtime._backend import LoadOptions, Session, backend_for
from edgewise.device_runtime._inputs import InputValidator, synthetic_inputs
from edgewise.device_runtime._placed import PlacedModel
from edgewise.device_runtime._placement import Attempt, Placement, rank, satisfies
from edgewise.device_runtime._text import TextModel
from edgewise.errors import ArtifactError, BundleNotFoundError, EdgewiseError, PlacementError

_SUFFIX_FORMATS = {".onnx": "onnx", ".ort": "onnx", ".tflite": "tflite", ".gguf": "gguf",
                   ".mlpackage": "coreml", ".mlmodel": "coreml", ".mlmodelc": "coreml"}


class Model(PlacedModel):
    """A model ready to run on this device.

    ``run`` validates inputs against ``signature`` and returns ``{output name: array}``.
    Safe to call from many threads at once (the engine session is; nothing here mutates).
    """

    __slots__ = ("_run", "_session", "_validate", "bundle", "path", "placement", "signature")

    def __init__(self, session: Session, placement: Placement, path: Path, bundle: Bundle | None) -> None:
        self._session = session
        self._run = session.run  # bound once: the run path is measured against the raw engine
        self._validate = InputValidator(session.signature.inputs)
        self.signature: Signature = session.signature
        self.placement = placement
        self.path = path
        self.bundle = bundle

    def run(self, inputs: Any) -> dict[str, np.ndarray]:
        return self._run(self._validate(inputs))

    def _pipeline(self) -> tuple[Callable[[Any], Any] | None, Callable[[Any], dict[str, np.ndarray]]]:
        """``(validate, run)`` with ``run(validate(inputs))`` equal to ``self.run(inputs)``; ``validate``
        is None when ``run`` takes the caller's inputs itself. For wrappers on the request path
        (observation): calling these two directly saves them this method's Python frame.
        """
        return self._validate, self._run

    def __repr__(self) -> str:
        return f"Model({self.path.name}: {self.placement.describe()})"


class _EngineRunModel(Model):
    """A ``Model`` whose ``run`` is the session's own runner (``Session.runner``): requests already in
    the engine's prepared form go straight to it, anything else through ``Model.run``'s checks.

    ``run`` is a slot filled per instance, so the call reaches the session's closure directly. Only
    sessions that offer ``runner`` get this class; the others keep ``Model.run`` with nothing added.
    """

    __slots__ = ("run",)

    def __init__(self, session: Session, placement: Placement, path: Path, bundle: Bundle | None) -> None:
        super().__init__(session, placement, path, bundle)
        checked = functools.partial(Model.run, self)
        self.run = session.runner(checked) or checked

    def _pipeline(self) -> tuple[Callable[[Any], Any] | None, Callable[[Any], dict[str, np.ndarray]]]:
        return None, self.run


def load(
    artifact: str | os.PathLike[str] | Bundle,
    *,
    device: str = "auto",
    strict: bool = False,
    threads: int | None = None,
    warmup: bool = True,
    verify: bool = True,
    engine_options: dict[str, Any] | None = None,
) -> Model | TextModel:
    """Load a bundle (directory with manifest.json) or a bare model file and place it.

    Tensor models (ONNX, TFLite, Core ML) come back as ``Model`` (``run``); GGUF language
    models as ``TextModel`` (``generate``/``chat``; ``engine_options`` may set ``n_ctx`` and
    ``n_gpu_layers``, ``"auto"`` by default: as many layers as free GPU memory holds).

    ``device`` is "auto" (NPU > GPU > CPU), a kind ("npu", "gpu", "cpu") or an accelerator
    name ("cuda", "CUDAExecutionProvider"). A failing accelerator falls back to the next one
    and finally the CPU, recorded in ``model.placement``; ``strict=True`` raises
    ``PlacementError`` instead. ``warmup`` runs the bundle's sample input (or zeros) once, so
    the first real request does not pay for lazy engine initialisation — and so an
    accelerator that accepts a model but cannot run it is caught here, not in production.
    """
    bundle, path, fmt = _resolve(artifact, verify=verify)
    backend = backend_for(fmt)
    options = LoadOptions(threads=threads, engine_options=dict(engine_options or {}))
    candidates = rank(backend.accelerators(), device, strict=strict)
    if not candidates:
        raise PlacementError(f"no accelerator of {backend.name} matches device={device!r}")
    failures: list[Attempt] = []
    if not satisfies(candidates[0], device):
        failures.append(Attempt(device, f"no such accelerator in {backend.name} on this machine"))
    for accelerator in candidates:
        try:
            session = backend.open(path, accelerator, options)
            if warmup:
                _warm_up(session, bundle)
            text = getattr(session, "task", None) == "text-generation"
        except ArtifactError:
            raise
        except EdgewiseError as exc:
            failures.append(Attempt(accelerator.alias, exc.message))
            continue
        except Exception as exc:  # an engine refusing this accelerator: try the next one
            failures.append(Attempt(accelerator.alias, f"{type(exc).__name__}: {str(exc).strip()[:200]}"))
            continue
        placement = Placement(
            backend=backend.name, accelerator=session.accelerator, device=accelerator.kind,
            requested=device, fallbacks=tuple(failures),
        )
        if text:
            return TextModel(session, placement, path, bundle)
        return _model_for(session, placement, path, bundle)
    tried = "; ".join(f"{a.accelerator}: {a.reason}" for a in failures)
    raise PlacementError(
        f"{path.name} could not be placed on device={device!r}{' (strict)' if strict else ''}: {tried}",
    )


def _model_for(session: Session, placement: Placement, path: Path, bundle: Bundle | None) -> Model:
    model_class = _EngineRunModel if hasattr(session, "runner") else Model
    return model_class(session, placement, path, bundle)


def _warm_up(session: Session, bundle: Bundle | None) -> None:
    if hasattr(session, "warm_up"):  # engines whose inputs are not tensors (llama.cpp)
        session.warm_up()
        return
    if bundle is not None and bundle.manifest.sample is not None:
        inputs, _ = bundle.load_sample()
    else:
        inputs = synthetic_inputs(session.signature)
    session.run(InputValidator(session.signature.inputs)(inputs))


def _resolve(artifact: str | os.PathLike[str] | Bundle, *, verify: bool) -> tuple[Bundle | None, Path, str]:
    if isinstance(artifact, Bundle):
        return artifact, artifact.model_path, artifact.manifest.format
    path = Path(artifact)
    if path.is_dir() and (path / "manifest.json").exists():
        bundle = Bundle.open(path, verify=verify)
        return bundle, bundle.model_path, bundle.manifest.format
    if not path.exists():
        raise BundleNotFoundError(f"{path} does not exist")
    return None, path, detect_format(path)


def detect_format(path: Path) -> str:
    """Format of a bare model file, by suffix, confirmed by magic bytes where the format has them."""
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    head = b""
    if path.is_file():
        with open(path, "rb") as handle:
            head = handle.read(8)
    if head[:4] == b"GGUF":
        return "gguf"
    if head[4:8] == b"TFL3":
        return "tflite"
    if fmt is None:
        raise ArtifactError(
            f"cannot tell the model format of {path.name}",
            hint="Use a bundle directory, or a file ending in .onnx, .tflite, .gguf or .mlpackage.",
        )
    if path.is_file() and path.stat().st_size == 0:
        raise ArtifactError(f"{path.name} is empty")
    return fmt
