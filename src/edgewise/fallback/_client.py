"""The seam every cloud protocol plugs into: a ``CloudClient`` per protocol, found by name.

A new protocol (Triton gRPC, TGI, a vendor API) is one module implementing ``TextCloudClient`` or
``TensorCloudClient`` on top of ``ResilientHTTP`` (which brings deadline, retries, breaker and the
concurrency limit), plus one line in ``_PROTOCOLS``. The router only sees these protocols.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from edgewise.fallback._http import ResilientHTTP
    from edgewise.fallback._resilience import Deadline
    from edgewise.fallback.config import Endpoint

Messages = Sequence[dict[str, Any]]


@dataclass(frozen=True)
class CloudCompletion:
    """A finished text answer from an endpoint, with its usage when the server reports it."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str | None = None


class CloudClient(Protocol):
    """What every protocol client has: its endpoint, its HTTP layer (breaker inside), readiness."""

    protocol: str
    endpoint: Endpoint
    http: ResilientHTTP

    def ready(self, deadline: Deadline) -> bool: ...


class TextCloudClient(CloudClient, Protocol):
    """Language models: chat and plain completions, whole or streamed (text pieces as they arrive)."""

    def chat(self, messages: Messages, *, max_tokens: int, temperature: float, stop: list[str] | None,
                   deadline: Deadline) -> CloudCompletion: ...

    def chat_stream(self, messages: Messages, *, max_tokens: int, temperature: float, stop: list[str] | None,
                    deadline: Deadline) -> Iterator[str]: ...

    def complete(self, prompt: str, *, max_tokens: int, temperature: float, stop: list[str] | None,
                       deadline: Deadline) -> CloudCompletion: ...

    def complete_stream(self, prompt: str, *, max_tokens: int, temperature: float, stop: list[str] | None,
                        deadline: Deadline) -> Iterator[str]: ...


class TensorCloudClient(CloudClient, Protocol):
    """Tensor models: named arrays in, named arrays out."""

    def infer(self, inputs: dict[str, np.ndarray], *, deadline: Deadline,
                    outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]: ...

    def metadata(self, deadline: Deadline) -> dict[str, Any]: ...


# protocol -> (module, class)
_PROTOCOLS: dict[str, tuple[str, str]] = {
    "openai": ("edgewise.fallback._openai", "OpenAIClient"),
    "kserve": ("edgewise.fallback._kserve", "KServeClient"),
}


def client_for(endpoint: Endpoint, **kwargs: Any) -> CloudClient:
    """The client for ``endpoint.protocol`` (``kwargs`` go to ``ResilientHTTP``, e.g. ``transport``)."""
    module_name, class_name = _PROTOCOLS[endpoint.protocol]
    return getattr(importlib.import_module(module_name), class_name)(endpoint, **kwargs)
