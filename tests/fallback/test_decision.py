"""The pure routing decision, exhaustively: every mode x breaker state x device blocker."""

from __future__ import annotations

import itertools

import pytest

from edgewise.fallback._decision import (
    CLOUD,
    DEVICE,
    REFUSE,
    BreakerState,
    DeviceFacts,
    HostPolicy,
    HostState,
    Mode,
    Reason,
    RequestFacts,
    decide,
    device_blocker,
    shape_problem,
)

FITS = (RequestFacts(prompt_tokens=100, requested_tokens=64), DeviceFacts(context_size=512))
# one case per blocker: (request, device, expected reason)
BLOCKERS = [
    (RequestFacts(prompt_tokens=500, requested_tokens=64), DeviceFacts(context_size=512), Reason.CONTEXT_OVERFLOW),
    (RequestFacts(input_bytes=10_000), DeviceFacts(max_input_bytes=4096), Reason.INPUT_TOO_LARGE),
    (RequestFacts(shape_problem="x: dim 0 is 64 > 32"), DeviceFacts(), Reason.SHAPE_OVER_LIMITS),
    (RequestFacts(), DeviceFacts(installed=False), Reason.MODEL_NOT_INSTALLED),
    (RequestFacts(), DeviceFacts(free_memory_bytes=100 << 20, required_memory_bytes=200 << 20), Reason.LOW_MEMORY),
    (RequestFacts(), DeviceFacts(host=HostState(thermal="critical")), Reason.HOST_STATE),
    (RequestFacts(), DeviceFacts(host=HostState(battery_pct=5, charging=False)), Reason.HOST_STATE),
]
BREAKERS = [None, BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN]


def test_context_boundary_is_inclusive():
    device = DeviceFacts(context_size=512)
    assert device_blocker(RequestFacts(prompt_tokens=448, requested_tokens=64), device) is None
    reason, detail = device_blocker(RequestFacts(prompt_tokens=449, requested_tokens=64), device)
    assert reason is Reason.CONTEXT_OVERFLOW
    assert detail == "449 prompt + 64 requested tokens > 512 on-device context"


@pytest.mark.parametrize("request_facts, device, reason", BLOCKERS)
def test_each_blocker_is_named(request_facts, device, reason):
    assert device_blocker(request_facts, device)[0] is reason


def test_host_state_that_is_fine_or_charging_keeps_the_device():
    for host in (HostState(battery_pct=5, charging=True), HostState(battery_pct=80), HostState(thermal="fair"),
                 HostState()):
        assert device_blocker(RequestFacts(), DeviceFacts(host=host)) is None
    policy = HostPolicy(min_battery_pct=50, hot_states=("fair",))
    assert device_blocker(RequestFacts(), DeviceFacts(host=HostState(thermal="fair")), policy)[0] is Reason.HOST_STATE
    assert device_blocker(RequestFacts(), DeviceFacts(host=HostState(battery_pct=40)), policy)[0] is Reason.HOST_STATE


@pytest.mark.parametrize("mode, breaker", list(itertools.product(Mode, BREAKERS)))
def test_request_that_fits(mode, breaker):
    route = decide(*FITS, mode, breaker)
    cloud_ok = breaker in (BreakerState.CLOSED, BreakerState.HALF_OPEN)
    if mode is Mode.PREFER_ON_DEVICE:
        assert (route.target, route.reason, route.then) == (DEVICE, Reason.FITS_DEVICE, CLOUD if cloud_ok else None)
    elif mode is Mode.ONLY_ON_DEVICE:
        assert (route.target, route.then) == (DEVICE, None)
    elif mode is Mode.PREFER_CLOUD:
        if cloud_ok:
            assert (route.target, route.reason, route.then) == (CLOUD, Reason.PREFER_CLOUD, DEVICE)
        else:  # the cloud is unreachable or not configured: the device answers
            assert route.target == DEVICE and route.then is None
            assert route.reason is (Reason.CIRCUIT_OPEN if breaker else Reason.NO_CLOUD_ENDPOINT)
    else:
        if cloud_ok:
            assert (route.target, route.reason, route.then) == (CLOUD, Reason.ONLY_CLOUD, None)
        else:
            assert route.target == REFUSE
            assert route.reason is (Reason.CIRCUIT_OPEN if breaker else Reason.NO_CLOUD_ENDPOINT)


@pytest.mark.parametrize("mode, breaker, blocked", list(itertools.product(Mode, BREAKERS, BLOCKERS)))
def test_request_the_device_cannot_serve(mode, breaker, blocked):
    request, device, reason = blocked
    route = decide(request, device, mode, breaker)
    cloud_ok = breaker in (BreakerState.CLOSED, BreakerState.HALF_OPEN)
    assert route.target != DEVICE and route.then != DEVICE  # never the device when it cannot serve
    if mode is Mode.ONLY_ON_DEVICE:
        assert (route.target, route.reason) == (REFUSE, reason)
        assert route.detail.startswith("only_on_device: ")
    elif cloud_ok:
        assert route.target == CLOUD and route.then is None
        expected = {Mode.PREFER_ON_DEVICE: reason, Mode.PREFER_CLOUD: Reason.PREFER_CLOUD,
                    Mode.ONLY_CLOUD: Reason.ONLY_CLOUD}[mode]
        assert route.reason is expected
    else:
        assert route.target == REFUSE
        assert route.reason is (Reason.CIRCUIT_OPEN if breaker else Reason.NO_CLOUD_ENDPOINT)


def test_route_describes_itself():
    route = decide(BLOCKERS[0][0], BLOCKERS[0][1], Mode.PREFER_ON_DEVICE, BreakerState.CLOSED)
    assert route.describe() == "cloud: context_overflow (500 prompt + 64 requested tokens > 512 on-device context)"


SPECS = [("pixels", ("batch", 1, 8, 8))]


@pytest.mark.parametrize("shape, limits, problem", [
    ((4, 1, 8, 8), {}, None),
    ((4, 1, 8, 8), {"max_batch": 4}, None),
    ((5, 1, 8, 8), {"max_batch": 4}, "pixels: dim 0 (batch) is 5 > the bundle's limit 4"),
    ((4, 1, 16, 16), {}, "pixels: dim 2 is 16, the on-device model takes 8"),
    ((1, 8, 8), {}, "pixels: rank 3, the on-device model takes rank 4"),
])
def test_shape_problem(shape, limits, problem):
    assert shape_problem({"pixels": shape}, SPECS, limits) == problem


def test_named_dynamic_dim_limit():
    specs = [("ids", ("batch", "sequence"))]
    assert shape_problem({"ids": (1, 128)}, specs, {"max_dim_sequence": 128}) is None
    assert shape_problem({"ids": (1, 129)}, specs, {"max_dim_sequence": 128}) == (
        "ids: dim 1 (sequence) is 129 > the bundle's limit 128")
    assert shape_problem({"other": (1, 9999)}, specs, {"max_dim_sequence": 128}) is None
