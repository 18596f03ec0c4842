"""Deadline, backoff, Retry-After and the circuit breaker, on an injected clock (no sleeping)."""

from __future__ import annotations

import pytest

from edgewise.fallback._decision import BreakerState
from edgewise.fallback._resilience import BreakerPolicy, CircuitBreaker, Deadline, RetryPolicy, retry_after_s


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_deadline_counts_down_and_never_goes_negative():
    clock = Clock()
    deadline = Deadline(2.0, clock)
    assert deadline.remaining() == 2.0 and not deadline.expired
    clock.now += 1.5
    assert deadline.remaining() == pytest.approx(0.5)
    clock.now += 1.0
    assert deadline.remaining() == 0.0 and deadline.expired


def test_backoff_is_full_jitter_exponential_and_capped():
    policy = RetryPolicy(base_s=0.1, cap_s=1.0)
    assert [policy.backoff(n, rng=lambda: 1.0) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert policy.backoff(3, rng=lambda: 0.25) == pytest.approx(0.2)


def test_retry_after_seconds_and_http_date():
    assert retry_after_s("3") == 3.0
    assert retry_after_s(" 0.5 ") == 0.5
    assert retry_after_s("-4") == 0.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0


def _breaker(**kw):
    clock = Clock()
    policy = BreakerPolicy(**{"window": 10, "min_calls": 4, "failure_rate": 0.5, "open_s": 5.0, **kw})
    return CircuitBreaker(policy, clock), clock


def test_breaker_opens_on_failure_rate_and_recovers_through_half_open():
    breaker, clock = _breaker()
    for ok in (True, False, True):
        assert breaker.acquire()
        breaker.record(ok)
    assert breaker.state is BreakerState.CLOSED  # 3 calls: fewer than min_calls, no verdict
    assert breaker.acquire()
    breaker.record(False)  # 2 of 4 failed = 50 %
    assert breaker.state is BreakerState.OPEN
    assert not breaker.acquire()
    assert breaker.retry_in_s() == pytest.approx(5.0)
    clock.now += 5.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.acquire()  # the one probe
    assert not breaker.acquire()  # a second caller while the probe is out
    breaker.record(True)
    assert breaker.state is BreakerState.CLOSED
    assert [s for _, s in breaker.transitions] == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_failed_probe_opens_again_and_released_probe_frees_the_slot():
    breaker, clock = _breaker(min_calls=1, failure_rate=1.0)
    breaker.acquire()
    breaker.record(False)
    clock.now += 5.0
    assert breaker.acquire()
    breaker.release()  # cancelled: no verdict, the next caller may probe
    assert breaker.acquire()
    breaker.record(False)
    assert breaker.state is BreakerState.OPEN
    clock.now += 4.9
    assert breaker.state is BreakerState.OPEN


def test_window_forgets_old_failures():
    breaker, _ = _breaker(window=4, min_calls=4, failure_rate=0.75)
    for ok in (False, False, True, True, True, True, False, False):
        breaker.acquire()
        breaker.record(ok)
    assert breaker.state is BreakerState.CLOSED  # the window holds T, T, F, F: 50 %
    breaker.acquire()
    breaker.record(False)
    assert breaker.state is BreakerState.OPEN  # T, F, F, F: 75 %


def test_stragglers_after_opening_are_ignored():
    breaker, _ = _breaker(min_calls=1, failure_rate=1.0)
    breaker.acquire()
    breaker.record(False)
    breaker.record(True)
    assert breaker.state is BreakerState.OPEN
