"""Device or cloud? A pure function over plain facts, so every branch is a fast unit test.

The router (the I/O shell) gathers the facts — token counts, input sizes, whether a model is
installed, free memory, the host app's battery/thermal state, the endpoint's breaker state —
and asks ``decide`` for a ``Route``. Nothing here touches a model, a socket or a clock.

The route names a first target and, where the mode allows it, a second one to try when the
first fails at run time (an on-device error or deadline; an unreachable cloud in prefer_cloud).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

DEVICE = "device"
CLOUD = "cloud"
REFUSE = "refuse"


class Mode(str, Enum):
    """Where a request may be served. ``prefer_*`` fall back to the other side; ``only_*`` never do."""

    PREFER_ON_DEVICE = "prefer_on_device"
    ONLY_ON_DEVICE = "only_on_device"
    PREFER_CLOUD = "prefer_cloud"
    ONLY_CLOUD = "only_cloud"


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Reason(str, Enum):
    """Why a request went where it went (the code a log or a metric groups by)."""

    FITS_DEVICE = "fits_device"
    CONTEXT_OVERFLOW = "context_overflow"
    INPUT_TOO_LARGE = "input_too_large"
    SHAPE_OVER_LIMITS = "shape_over_limits"
    MODEL_NOT_INSTALLED = "model_not_installed"
    LOW_MEMORY = "low_memory"
    HOST_STATE = "host_state"
    DEVICE_ERROR = "device_error"
    DEVICE_DEADLINE = "device_deadline"
    PREFER_CLOUD = "prefer_cloud"
    ONLY_CLOUD = "only_cloud"
    CLOUD_UNAVAILABLE = "cloud_unavailable"
    CIRCUIT_OPEN = "circuit_open"
    NO_CLOUD_ENDPOINT = "no_cloud_endpoint"


@dataclass(frozen=True, slots=True)
class HostState:
    """What the host app reports about the device (battery, thermal); None fields are unknown."""

    battery_pct: float | None = None
    charging: bool | None = None
    thermal: str | None = None  # "nominal" | "fair" | "serious" | "critical" (iOS ProcessInfo names)


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """When the host state alone sends work to the cloud."""

    min_battery_pct: float = 15.0
    hot_states: tuple[str, ...] = ("serious", "critical")


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What the device can do right now. ``None`` means unknown / no limit."""

    installed: bool = True
    context_size: int | None = None  # text models: tokens of context
    max_input_bytes: int | None = None  # tensor models: the bundle's limit
    free_memory_bytes: int | None = None
    required_memory_bytes: int | None = None  # only when the model is not loaded yet
    host: HostState | None = None


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What a request needs. Text: token counts; tensor: bytes and a shape verdict from the shell."""

    prompt_tokens: int | None = None
    requested_tokens: int = 0
    input_bytes: int = 0
    shape_problem: str | None = None  # from ``shape_problem()``: why the shapes exceed the bundle's


@dataclass(frozen=True, slots=True)
class Route:
    """The decision: ``target`` first, ``then`` if that fails at run time (or None)."""

    target: str  # DEVICE | CLOUD | REFUSE
    reason: Reason
    detail: str
    then: str | None = None

    def describe(self) -> str:
        return f"{self.target}: {self.reason.value} ({self.detail})"


def device_blocker(request: RequestFacts, device: DeviceFacts,
                   policy: HostPolicy = HostPolicy()) -> tuple[Reason, str] | None:
    """Why the device cannot serve this request, or None when it can."""
    if not device.installed:
        return Reason.MODEL_NOT_INSTALLED, "no on-device model is installed"
    if request.prompt_tokens is not None and device.context_size is not None:
        need = request.prompt_tokens + request.requested_tokens
        if need > device.context_size:
            return (Reason.CONTEXT_OVERFLOW, f"{request.prompt_tokens} prompt + {request.requested_tokens} "
                    f"requested tokens > {device.context_size} on-device context")
    if device.max_input_bytes is not None and request.input_bytes > device.max_input_bytes:
        return (Reason.INPUT_TOO_LARGE,
                f"input of {request.input_bytes} bytes > the bundle's limit of {device.max_input_bytes}")
    if request.shape_problem is not None:
        return Reason.SHAPE_OVER_LIMITS, request.shape_problem
    if (device.required_memory_bytes is not None and device.free_memory_bytes is not None
            and device.required_memory_bytes > device.free_memory_bytes):
        return (Reason.LOW_MEMORY, f"loading needs ~{device.required_memory_bytes >> 20} MiB, "
                f"{device.free_memory_bytes >> 20} MiB free")
    host = device.host
    if host is not None:
        if host.thermal is not None and host.thermal in policy.hot_states:
            return Reason.HOST_STATE, f"thermal state {host.thermal}"
        if (host.battery_pct is not None and host.battery_pct < policy.min_battery_pct
                and not host.charging):
            return Reason.HOST_STATE, f"battery {host.battery_pct:g} % and not charging"
    return None


def decide(request: RequestFacts, device: DeviceFacts, mode: Mode, breaker: BreakerState | None,
           policy: HostPolicy = HostPolicy()) -> Route:
    """Where to serve ``request``. ``breaker`` is the cloud endpoint's state, None when none is configured.

    A half-open breaker counts as available: the breaker itself admits the probe, and a request it
    turns away at run time takes the route's ``then`` (the device, where the mode allows).
    """
    blocker = device_blocker(request, device, policy)
    cloud_ok = breaker is not None and breaker is not BreakerState.OPEN
    if mode is Mode.PREFER_ON_DEVICE:
        if blocker is None:
            return Route(DEVICE, Reason.FITS_DEVICE, "the device can serve it", CLOUD if cloud_ok else None)
        if cloud_ok:
            return Route(CLOUD, blocker[0], blocker[1])
        return _refuse_cloud(breaker, blocker)
    if mode is Mode.ONLY_ON_DEVICE:
        if blocker is None:
            return Route(DEVICE, Reason.FITS_DEVICE, "the device can serve it")
        return Route(REFUSE, blocker[0], f"only_on_device: {blocker[1]}")
    if mode is Mode.PREFER_CLOUD:
        if cloud_ok:
            return Route(CLOUD, Reason.PREFER_CLOUD, "prefer_cloud", DEVICE if blocker is None else None)
        if blocker is None:
            reason = Reason.CIRCUIT_OPEN if breaker is BreakerState.OPEN else Reason.NO_CLOUD_ENDPOINT
            return Route(DEVICE, reason, "cloud unavailable; the device can serve it")
        return _refuse_cloud(breaker, blocker)
    # ONLY_CLOUD
    if cloud_ok:
        return Route(CLOUD, Reason.ONLY_CLOUD, "only_cloud")
    return _refuse_cloud(breaker, None)


def _refuse_cloud(breaker: BreakerState | None, blocker: tuple[Reason, str] | None) -> Route:
    why = f"; the device cannot serve it: {blocker[1]}" if blocker else ""
    if breaker is None:
        return Route(REFUSE, Reason.NO_CLOUD_ENDPOINT, f"no cloud endpoint is configured{why}")
    return Route(REFUSE, Reason.CIRCUIT_OPEN, f"the cloud endpoint's circuit is open{why}")


def shape_problem(shapes: Mapping[str, Sequence[int]], specs: Sequence[tuple[str, Sequence[int | str]]],
                  limits: Mapping[str, int]) -> str | None:
    """Why these input shapes are over the bundle's limits (fixed dims, ``max_batch``, ``max_dim_<name>``).

    ``specs`` is ``[(input name, signature shape)]``; a ``str`` dim is dynamic. Returns None when
    the device model takes them. Names or dtypes that are simply wrong are not a routing matter:
    the device runtime's InputError reports those.
    """
    max_batch = limits.get("max_batch")
    for name, dims in specs:
        shape = shapes.get(name)
        if shape is None:
            continue
        if len(shape) != len(dims):
            return f"{name}: rank {len(shape)}, the on-device model takes rank {len(dims)}"
        for axis, (got, want) in enumerate(zip(shape, dims, strict=True)):
            if isinstance(want, int):
                if got != want:
                    return f"{name}: dim {axis} is {got}, the on-device model takes {want}"
                continue
            cap = max_batch if axis == 0 and max_batch is not None else limits.get(f"max_dim_{want}")
            if cap is not None and got > cap:
                return f"{name}: dim {axis} ({want}) is {got} > the bundle's limit {cap}"
    return None
