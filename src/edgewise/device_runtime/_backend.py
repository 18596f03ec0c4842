"""The seam every model format plugs into: a ``Backend`` per engine, found by format.

Adding a format (TFLite, Core ML, GGUF) is one module implementing ``Backend`` plus one
line in ``_BUILTIN``. Backends are imported lazily so that ``import edgewise.device_runtime``
costs nothing and works when only one engine is installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgewise.bundle import Signature
from edgewise.device_runtime._placement import Accelerator
from edgewise.errors import BackendUnavailableError


@dataclass(frozen=True)
class LoadOptions:
    """Engine-neutral knobs; a backend ignores what it cannot honour (and says so in ``notes``)."""

    threads: int | None = None
    engine_options: dict[str, Any] = field(default_factory=dict)


class Session(Protocol):
    """A model opened on one accelerator. ``run`` receives feeds already validated."""

    signature: Signature
    accelerator: str  # what the engine reports it actually uses (may differ from what was asked)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class Backend(Protocol):
    """One inference engine (onnxruntime, LiteRT, Core ML, llama.cpp)."""

    name: str
    formats: tuple[str, ...]

    def version(self) -> str: ...

    def accelerators(self) -> list[Accelerator]:
        """What this machine offers through this engine, best first; the CPU is always listed."""
        ...

    def open(self, path: Path, accelerator: Accelerator, options: LoadOptions) -> Session:
        """Open ``path`` on ``accelerator``; raise ArtifactError for an unreadable file and any
        other exception when the accelerator cannot take the model (the caller falls back)."""
        ...


# format -> (module, class, pip extra that installs the engine)
_BUILTIN: dict[str, tuple[str, str, str]] = {
    "onnx": ("edgewise.device_runtime._onnx", "OnnxRuntimeBackend", "onnx"),
    "gguf": ("edgewise.device_runtime._gguf", "LlamaCppBackend", "gguf"),
    "tflite": ("edgewise.device_runtime._litert", "LiteRTBackend", "tflite"),
    "coreml": ("edgewise.device_runtime._coreml", "CoreMLBackend", "coreml"),
}
_FACTORIES: dict[str, Callable[[], Backend]] = {}
_INSTANCES: dict[str, Backend] = {}


def register_backend(fmt: str, factory: Callable[[], Backend]) -> None:
    """Register (or replace) the backend for a format: for plug-ins and tests."""
    _FACTORIES[fmt] = factory
    _INSTANCES.pop(fmt, None)


def backend_for(fmt: str) -> Backend:
    """The backend that runs ``fmt``; BackendUnavailableError says what to install when missing."""
    if fmt in _INSTANCES:
        return _INSTANCES[fmt]
    if fmt in _FACTORIES:
        backend = _FACTORIES[fmt]()
    elif fmt in _BUILTIN:
        module_name, class_name, extra = _BUILTIN[fmt]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the {fmt} backend needs an engine that is not installed ({exc.name or exc})",
                hint=f"pip install 'edgewise[{extra}]'",
            ) from exc
        backend = getattr(module, class_name)()
    else:
        raise BackendUnavailableError(
            f"no device backend for format {fmt!r} in this edgewise version",
            hint=f"Formats with a backend: {', '.join(known_formats())}.",
        )
    _INSTANCES[fmt] = backend
    return backend


def known_formats() -> list[str]:
    return sorted(set(_BUILTIN) | set(_FACTORIES))
