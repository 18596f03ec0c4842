"""EngineGuard: one holder at a time, whether callers take the token on the fast path or block."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from edgewise.device_runtime._guard import EngineGuard


@pytest.fixture()
def frequent_switches():
    """Make the interpreter switch threads every few bytecodes, so overlaps would show."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_fast_path_and_blocking_callers_never_overlap(frequent_switches):
    guard = EngineGuard()
    take, give, waiting, wake = guard.take, guard.give, guard.waiting, guard.wake
    inside, most_inside, passes = [0], [0], [0]

    def critical() -> None:
        inside[0] += 1
        most_inside[0] = max(most_inside[0], inside[0])
        if passes[0] % 7 == 0:
            time.sleep(0)  # give the GIL away while holding the guard
        passes[0] += 1
        inside[0] -= 1

    def fast_caller() -> None:
        for _ in range(3000):
            try:
                take()
            except IndexError:
                with guard:
                    critical()
                continue
            try:
                critical()
            finally:
                give(True)
                if waiting:
                    wake()

    def blocking_caller() -> None:
        for _ in range(3000):
            with guard:
                critical()

    threads = [threading.Thread(target=f) for f in (fast_caller, fast_caller, blocking_caller, blocking_caller)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)  # a lost wake-up would leave a caller blocked forever
    assert not any(t.is_alive() for t in threads), "a caller never got the guard (lost wake-up)"
    assert most_inside[0] == 1
    assert passes[0] == 4 * 3000
    assert waiting == []
    take()  # the token is back
    give(True)


def test_a_blocked_caller_waits_for_the_holder():
    guard = EngineGuard()
    guard.take()  # held by the fast path
    entered = threading.Event()

    def waiter() -> None:
        with guard:
            entered.set()

    t = threading.Thread(target=waiter)
    t.start()
    assert not entered.wait(0.2)
    assert guard.waiting == [None]
    guard.give(True)
    guard.wake()
    assert entered.wait(10)
    t.join(10)
    guard.take()  # the waiter gave it back
    with pytest.raises(IndexError):
        guard.take()
