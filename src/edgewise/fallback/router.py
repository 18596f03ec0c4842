"""The router: one call for the app, served on the device or in the cloud, with where and why.

    router = Router(RouterConfig(text=Endpoint("https://llm.example.com", model="smollm2")),
                    text_model=device_runtime.load("smollm2.gguf"))
    answer = router.chat([{"role": "user", "content": "..."}], max_tokens=64)
    answer.text, answer.served_by, answer.reason, answer.latency_ms

A thin shell: it gathers facts (token counts, input sizes, host state, breaker state), asks the
pure ``decide`` where to go, runs there, and on a run-time failure takes the route's second
target where the mode allows. Every call returns a response or raises an ``edgewise.errors``
exception; nothing is dropped silently.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.errors import (
    CircuitOpenError,
    DeadlineExceededError,
    EdgewiseError,
    FallbackConfigError,
    FallbackError,
    InferenceError,
    InputError,
    OnDeviceRefusedError,
)
from edgewise.fallback import _loop
from edgewise.fallback._client import CloudClient, client_for
from edgewise.fallback._decision import (
    CLOUD,
    DEVICE,
    REFUSE,
    BreakerState,
    HostState,
    Mode,
    Reason,
    RequestFacts,
    Route,
    decide,
)
from edgewise.fallback._device import TensorModel, TextModel, device_facts, memory_needed, tensor_limits, tensor_request
from edgewise.fallback._resilience import Deadline
from edgewise.fallback.config import RouterConfig

HostHook = Callable[[], HostState | None]


@dataclass(frozen=True)
class Served:
    """Where a request was served and why: ``served_by`` is "device" or "cloud"."""

    served_by: str
    reason: str  # a Reason code: context_overflow, fits_device, cloud_unavailable, ...
    detail: str
    latency_ms: float
    endpoint: str | None = None
    tried: tuple[str, ...] = ()  # failures before the answer, e.g. ("device: InferenceError: ...",)

    def describe(self) -> str:
        where = f"cloud ({self.endpoint})" if self.served_by == CLOUD else "device"
        tried = f"; after {'; '.join(self.tried)}" if self.tried else ""
        return f"served by {where} in {self.latency_ms:.0f} ms: {self.reason} ({self.detail}){tried}"


class _ServedBy:
    """Shortcuts to ``served``: where, why and how fast an answer came."""

    served: Served

    @property
    def served_by(self) -> str:
        return self.served.served_by

    @property
    def reason(self) -> str:
        return self.served.reason

    @property
    def latency_ms(self) -> float:
        return self.served.latency_ms


@dataclass(frozen=True)
class TextResponse(_ServedBy):
    text: str
    served: Served
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class TensorResponse(_ServedBy):
    outputs: dict[str, np.ndarray]
    served: Served


@dataclass
class TextStream(_ServedBy):
    """Text pieces as they arrive; where it is served is known before the first piece.

    ``served`` is set when the stream starts; ``latency_ms`` on it is the time to the first piece.
    A stream that fails after pieces were delivered raises (it cannot move to the other side
    without repeating text).
    """

    served: Served
    _pieces: Iterator[str] = field(repr=False)

    def __iter__(self) -> Iterator[str]:
        return self._pieces


class Router:
    """Route text and tensor requests between the on-device model and a cloud endpoint.

    ``text_model`` / ``tensor_model``: a loaded model, a path to load lazily on the first request
    the device serves (after checking free memory), or None (not installed: the cloud serves).
    ``host_state``: a hook the app provides (battery, thermal), called once per request.
    ``transport``: httpx transport for the cloud clients (default: real sockets).
    """

    def __init__(self, config: RouterConfig | None = None, *, text_model: TextModel | str | os.PathLike | None = None,
                 tensor_model: TensorModel | str | os.PathLike | None = None, host_state: HostHook | None = None,
                 engine_options: dict[str, Any] | None = None, transport: Any = None) -> None:
        self.config = config or RouterConfig()
        self._text_model = text_model
        self._tensor_model = tensor_model
        self._host_hook = host_state
        self._engine_options = engine_options
        self._load_lock = threading.Lock()
        self._tensor_limits: tuple[list, dict] | None = None
        self.text_cloud: CloudClient | None = (
            client_for(self.config.text, transport=transport) if self.config.text else None)
        self.tensor_cloud: CloudClient | None = (
            client_for(self.config.tensor, transport=transport) if self.config.tensor else None)

    # -- public API ------------------------------------------------------------------------------

    def chat(self, messages: Sequence[Mapping[str, Any]], *, max_tokens: int = 128, temperature: float = 0.0,
             stop: Sequence[str] | None = None, mode: Mode | str | None = None,
             deadline_s: float | None = None) -> TextResponse:
        """A chat completion (messages with role/content), on the device or in the cloud."""
        return self._text("chat", list(messages), max_tokens, temperature, stop, mode, deadline_s)

    def complete(self, prompt: str, *, max_tokens: int = 128, temperature: float = 0.0,
                 stop: Sequence[str] | None = None, mode: Mode | str | None = None,
                 deadline_s: float | None = None) -> TextResponse:
        """A plain text completion of ``prompt``."""
        return self._text("complete", prompt, max_tokens, temperature, stop, mode, deadline_s)

    def chat_stream(self, messages: Sequence[Mapping[str, Any]], *, max_tokens: int = 128,
                    temperature: float = 0.0, stop: Sequence[str] | None = None, mode: Mode | str | None = None,
                    deadline_s: float | None = None) -> TextStream:
        return self._text("chat", list(messages), max_tokens, temperature, stop, mode, deadline_s, stream=True)

    def complete_stream(self, prompt: str, *, max_tokens: int = 128, temperature: float = 0.0,
                        stop: Sequence[str] | None = None, mode: Mode | str | None = None,
                        deadline_s: float | None = None) -> TextStream:
        return self._text("complete", prompt, max_tokens, temperature, stop, mode, deadline_s, stream=True)

    def infer(self, inputs: Mapping[str, Any], *, mode: Mode | str | None = None,
              deadline_s: float | None = None) -> TensorResponse:
        """Run a tensor model: ``{input name: array}`` -> ``{output name: array}``."""
        start = time.perf_counter()
        deadline = Deadline(deadline_s or self.config.deadline_s)
        model = self._tensor_model
        loaded = model is not None and not isinstance(model, str | os.PathLike)
        if loaded:
            if self._tensor_limits is None:
                self._tensor_limits = tensor_limits(model)
            specs, limits = self._tensor_limits
            request = tensor_request(inputs, specs, limits)
            facts = device_facts(installed=True, max_input_bytes=limits.get("max_input_bytes"), host=self._host())
        else:
            request = RequestFacts(input_bytes=sum(np.asarray(v).nbytes for v in inputs.values()))
            facts = device_facts(installed=model is not None and Path(model).exists(), host=self._host(),
                                 required_memory=memory_needed(Path(model)) if model is not None
                                 and Path(model).exists() else None)
        route = decide(request, facts, self._mode(mode), self._breaker(self.tensor_cloud), self.config.host_policy)

        def on_device() -> dict[str, np.ndarray]:
            return self._loaded_tensor().run(inputs)

        def in_cloud() -> dict[str, np.ndarray]:
            return self.tensor_cloud.infer(dict(inputs), deadline=deadline)

        result, served = self._execute(route, on_device, in_cloud, self.tensor_cloud, deadline, start)
        return TensorResponse(outputs=result, served=served)

    def breaker_state(self, kind: str = "text") -> BreakerState | None:
        return self._breaker(self.text_cloud if kind == "text" else self.tensor_cloud)

    def close(self) -> None:
        for client in (self.text_cloud, self.tensor_cloud):
            if client is not None:
                client.http.close()
                _loop.run(client.http.aclose())

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- text --------------------------------------------------------------------------------------

    def _text(self, kind: str, payload: Any, max_tokens: int, temperature: float, stop: Sequence[str] | None,
              mode: Mode | str | None, deadline_s: float | None, *, stream: bool = False) -> Any:
        start = time.perf_counter()
        deadline = Deadline(deadline_s or self.config.deadline_s)
        mode = self._mode(mode)
        model = self._text_model
        stop = list(stop) if stop else None
        request = RequestFacts(requested_tokens=max_tokens)
        if model is None:
            facts = device_facts(installed=False, host=self._host())
        elif isinstance(model, str | os.PathLike):
            exists = Path(model).exists()
            facts = device_facts(installed=exists, host=self._host(),
                                 required_memory=memory_needed(Path(model)) if exists else None)
        else:
            if mode is not Mode.ONLY_CLOUD:
                tokens = model.count_chat_tokens(payload) if kind == "chat" else model.count_tokens(payload)
                request = RequestFacts(prompt_tokens=tokens, requested_tokens=max_tokens)
            facts = device_facts(installed=True, context_size=model.context_length, host=self._host())
        route = decide(request, facts, mode, self._breaker(self.text_cloud), self.config.host_policy)
        cloud = self.text_cloud
        args = {"max_tokens": max_tokens, "temperature": temperature, "stop": stop}

        if stream:
            return self._text_stream(kind, payload, args, route, deadline, start)

        def on_device() -> TextResponse:
            llm = self._loaded_text()
            call = llm.chat if kind == "chat" else llm.generate
            if self.config.device_deadline_s is not None:
                return self._device_text_with_deadline(call, payload, args, deadline)
            done = call(payload, **args)
            return TextResponse(done.text, _PENDING, done.finish_reason, done.prompt_tokens, done.completion_tokens)

        def in_cloud() -> TextResponse:
            done = (cloud.chat(payload, deadline=deadline, **args) if kind == "chat"
                    else cloud.complete(payload, deadline=deadline, **args))
            return TextResponse(done.text, _PENDING, done.finish_reason, done.prompt_tokens, done.completion_tokens)

        answer, served = self._execute(route, on_device, in_cloud, cloud, deadline, start)
        return TextResponse(answer.text, served, answer.finish_reason, answer.prompt_tokens, answer.completion_tokens)

    def _device_text_with_deadline(self, call: Callable, payload: Any, args: dict, deadline: Deadline) -> TextResponse:
        """Generate on the device as a stream, giving up when ``device_deadline_s`` (or the deadline) passes."""
        budget = min(self.config.device_deadline_s, deadline.remaining())
        device_deadline = Deadline(budget)
        pieces = []
        stream = call(payload, stream=True, **args)
        try:
            for piece in stream:
                pieces.append(piece)
                if device_deadline.expired:
                    raise DeadlineExceededError(f"the device did not finish within {budget:.2f} s",
                                                deadline_s=budget, where="on device")
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # stop generating: the engine is free for the next request at once
        finish = "length" if len(pieces) >= args["max_tokens"] else "stop"
        return TextResponse("".join(pieces), _PENDING, finish, None, len(pieces))

    def _text_stream(self, kind: str, payload: Any, args: dict, route: Route, deadline: Deadline,
                     start: float) -> TextStream:
        cloud = self.text_cloud

        def on_device() -> Iterator[str]:
            llm = self._loaded_text()
            call = llm.chat if kind == "chat" else llm.generate
            return iter(call(payload, stream=True, **args))

        def in_cloud() -> Iterator[str]:
            return (cloud.chat_stream(payload, deadline=deadline, **args) if kind == "chat"
                    else cloud.complete_stream(payload, deadline=deadline, **args))

        def first(open_stream: Callable[[], Iterator[str]]) -> Iterator[str]:
            # Pull the first piece here, so a failure to start still falls back to the other side.
            pieces = open_stream()
            try:
                head = next(pieces)
            except StopIteration:
                return iter(())
            return _chain(head, pieces)

        pieces, served = self._execute(route, lambda: first(on_device), lambda: first(in_cloud), cloud, deadline,
                                       start)
        return TextStream(served=served, _pieces=pieces)

    # -- shared ------------------------------------------------------------------------------------

    def _execute(self, route: Route, on_device: Callable[[], Any], in_cloud: Callable[[], Any],
                 cloud: CloudClient | None, deadline: Deadline, start: float) -> tuple[Any, Served]:
        if route.target == REFUSE:
            raise self._refusal(route, cloud)
        runners = {DEVICE: on_device, CLOUD: in_cloud}
        tried: list[str] = []
        reason, detail = route.reason, route.detail
        target: str | None = route.target
        while target is not None:
            try:
                result = runners[target]()
            except Exception as exc:
                error, next_reason = self._classify(target, exc)
                then = route.then if target == route.target else None
                if then is None or next_reason is None or deadline.expired:
                    raise error from (exc if error is not exc else exc.__cause__)
                tried.append(f"{target}: {type(error).__name__}: {error.message}")
                reason, detail = next_reason, error.message
                target = then
                continue
            endpoint = cloud.endpoint.name if target == CLOUD and cloud is not None else None
            served = Served(target, reason.value, detail, 1e3 * (time.perf_counter() - start), endpoint, tuple(tried))
            return result, served
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _classify(target: str, exc: Exception) -> tuple[EdgewiseError, Reason | None]:
        """The edgewise error for a failed target, and the reason to try the other side (None: do not)."""
        if target == DEVICE:
            if isinstance(exc, DeadlineExceededError):
                return exc, Reason.DEVICE_DEADLINE
            if isinstance(exc, InputError) and not hasattr(exc, "context_size"):
                return exc, None  # the caller's inputs are wrong: the cloud would refuse them too
            if isinstance(exc, EdgewiseError):
                reason = Reason.CONTEXT_OVERFLOW if hasattr(exc, "context_size") else Reason.DEVICE_ERROR
                return exc, reason
            wrapped = InferenceError(f"the on-device model failed: {type(exc).__name__}: {exc}")
            wrapped.__cause__ = exc
            return wrapped, Reason.DEVICE_ERROR
        if isinstance(exc, DeadlineExceededError):
            return exc, None  # no time left for the device either
        if isinstance(exc, CircuitOpenError):
            return exc, Reason.CIRCUIT_OPEN
        if isinstance(exc, FallbackError):
            return exc, Reason.CLOUD_UNAVAILABLE
        if isinstance(exc, EdgewiseError):
            return exc, None
        raise exc

    def _refusal(self, route: Route, cloud: CloudClient | None) -> EdgewiseError:
        if route.reason is Reason.CIRCUIT_OPEN and cloud is not None:
            retry_in = cloud.http.breaker.retry_in_s()
            return CircuitOpenError(f"{cloud.endpoint.name}: {route.detail}", endpoint=cloud.endpoint.name,
                                    retry_in_s=retry_in)
        if route.reason is Reason.NO_CLOUD_ENDPOINT:
            return FallbackConfigError(route.detail, hint="Configure a cloud endpoint for this kind of model, "
                                       "or make the request fit the device.")
        return OnDeviceRefusedError(f"refused on device: {route.detail}", reason=route.reason.value)

    def _mode(self, mode: Mode | str | None) -> Mode:
        if mode is None:
            return self.config.mode
        try:
            return Mode(mode)
        except ValueError as exc:
            raise FallbackConfigError(f"unknown mode {mode!r}; expected one of {[m.value for m in Mode]}") from exc

    @staticmethod
    def _breaker(client: CloudClient | None) -> BreakerState | None:
        return None if client is None else client.http.breaker.state

    def _host(self) -> HostState | None:
        if self._host_hook is None:
            return None
        try:
            return self._host_hook()
        except Exception:  # a broken hook must not break serving: unknown host state
            return None

    def _loaded_text(self) -> TextModel:
        return self._loaded("_text_model")

    def _loaded_tensor(self) -> TensorModel:
        return self._loaded("_tensor_model")

    def _loaded(self, attribute: str):
        """The on-device model, loaded on first use when it was given as a path (once, under a lock)."""
        model = getattr(self, attribute)
        if isinstance(model, str | os.PathLike):
            with self._load_lock:
                model = getattr(self, attribute)
                if isinstance(model, str | os.PathLike):
                    from edgewise import device_runtime

                    model = device_runtime.load(model, engine_options=self._engine_options)
                    setattr(self, attribute, model)
        return model

_PENDING = Served(DEVICE, "", "", 0.0)


def _chain(head: str, rest: Iterator[str]) -> Iterator[str]:
    yield head
    yield from rest
