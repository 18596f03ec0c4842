"""What the router needs from the on-device side, as small protocols, and the facts it reads from it.

Language models: ``device_runtime.load("m.gguf")`` returns a ``TextModel`` (context length, token
counting, chat/generate). Tensor models: a ``device_runtime.Model`` (signature, bundle limits, run).
The router depends only on these shapes, so any engine that offers them plugs in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgewise.fallback._decision import DeviceFacts, HostState, RequestFacts, shape_problem


@runtime_checkable
class Completion(Protocol):
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@runtime_checkable
class TextModel(Protocol):
    """The on-device language model contract (``device_runtime.TextModel``)."""

    context_length: int

    def count_tokens(self, text: str) -> int: ...

    def count_chat_tokens(self, messages: Sequence[Mapping[str, Any]]) -> int: ...

    def chat(self, messages: Sequence[Mapping[str, Any]], *, max_tokens: int = 128, temperature: float = 0.0,
             stop: Sequence[str] | None = None, stream: bool = False) -> Completion | Iterator[str]: ...

    def generate(self, prompt: str, *, max_tokens: int = 128, temperature: float = 0.0,
                 stop: Sequence[str] | None = None, stream: bool = False) -> Completion | Iterator[str]: ...


class TensorModel(Protocol):
    """The on-device tensor model contract (``device_runtime.Model``)."""

    signature: Any
    bundle: Any

    def run(self, inputs: Any) -> dict[str, np.ndarray]: ...


def free_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_needed(path: Path) -> int:
    """What loading ``path`` needs, roughly: its bytes plus a quarter for buffers and caches."""
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return int(size * 1.25)


def tensor_limits(model: TensorModel) -> tuple[list[tuple[str, tuple]], dict[str, Any]]:
    """(input specs, bundle limits) of a loaded tensor model, computed once per router."""
    specs = [(spec.name, tuple(spec.shape)) for spec in model.signature.inputs]
    bundle = getattr(model, "bundle", None)
    limits = dict(bundle.manifest.limits) if bundle is not None else {}
    return specs, limits


def tensor_request(inputs: Mapping[str, Any], specs: list[tuple[str, tuple]], limits: Mapping[str, Any]
                   ) -> RequestFacts:
    nbytes = 0
    shapes = {}
    for name, value in inputs.items():
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        nbytes += array.nbytes
        shapes[name] = array.shape
    return RequestFacts(input_bytes=nbytes, shape_problem=shape_problem(shapes, specs, limits) if specs else None)


def device_facts(*, installed: bool, context_size: int | None = None, max_input_bytes: int | None = None,
                 host: HostState | None = None, required_memory: int | None = None) -> DeviceFacts:
    return DeviceFacts(installed=installed, context_size=context_size, max_input_bytes=max_input_bytes,
                       free_memory_bytes=free_memory_bytes() if required_memory is not None else None,
                       required_memory_bytes=required_memory, host=host)
