"""Deadlines, safe retries with jittered exponential backoff, and a per-endpoint circuit breaker.

Kept apart from HTTP so each piece is plain logic with an injectable clock (unit-tested without
sleeping). The HTTP layer (``_http.py``) applies them:

* one deadline per request covers queueing, connecting, retries, waiting and streaming;
* retries only where repeating cannot do harm twice: the connection was never made, or the server
  said "not now" (429 / 503, honouring ``Retry-After``) before doing any work;
* the breaker counts failures in a sliding window of recent calls; when too many fail it opens
  (calls fail fast), after ``open_s`` it lets probes through (half-open), and closes again when
  they succeed.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from edgewise.fallback._decision import BreakerState

Clock = Callable[[], float]


class Deadline:
    """A point in time on the monotonic clock; ``remaining()`` is never negative."""

    __slots__ = ("_clock", "at", "budget_s")

    def __init__(self, budget_s: float, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.budget_s = budget_s
        self.at = clock() + budget_s

    def remaining(self) -> float:
        return max(0.0, self.at - self._clock())

    @property
    def expired(self) -> bool:
        return self._clock() >= self.at


@dataclass(frozen=True)
class RetryPolicy:
    """Full-jitter exponential backoff: attempt n waits uniform(0, min(cap, base * 2**n))."""

    attempts: int = 3  # total tries, the first included
    base_s: float = 0.05
    cap_s: float = 2.0
    max_retry_after_s: float = 30.0  # a longer Retry-After is not waited for

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        return rng() * min(self.cap_s, self.base_s * (2 ** retry))


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), None if absent/unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class BreakerPolicy:
    window: int = 20  # recent calls considered
    min_calls: int = 10  # no verdict on fewer
    failure_rate: float = 0.5  # open at or above this share of failures
    open_s: float = 5.0  # stay open this long before letting probes through
    half_open_probes: int = 1  # probes in flight at once while half-open; that many successes close it


class CircuitBreaker:
    """closed -> (too many failures) -> open -> (open_s later) -> half_open -> closed | open.

    Thread-safe: the router reads ``state`` from app threads while calls complete elsewhere.
    ``acquire()`` returns False when the call must not go out (open, or half-open with its probes
    already in flight); every acquired call must end with ``record(success)``.
    """

    def __init__(self, policy: BreakerPolicy = BreakerPolicy(), clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._outcomes: deque[bool] = deque(maxlen=policy.window)
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0
        self._probe_successes = 0
        self.transitions: list[tuple[float, BreakerState]] = []  # (clock, new state): tests and logs read it

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.policy.open_s:
            with self._lock:
                self._maybe_half_open()
        return self._state

    def retry_in_s(self) -> float:
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.policy.open_s - self._clock())

    def acquire(self) -> bool:
        with self._lock:
            self._maybe_half_open()
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.HALF_OPEN and self._probes < self.policy.half_open_probes:
                self._probes += 1
                return True
            return False

    def release(self) -> None:
        """An acquired call that ended without a verdict (cancelled, client-side error)."""
        with self._lock:
            if self._state is BreakerState.HALF_OPEN and self._probes:
                self._probes -= 1

    def record(self, success: bool) -> None:
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._probes = max(0, self._probes - 1)
                if not success:
                    self._open()
                    return
                self._probe_successes += 1
                if self._probe_successes >= self.policy.half_open_probes:
                    self._set(BreakerState.CLOSED)
                    self._outcomes.clear()
                    self._failures = 0
                return
            if self._state is BreakerState.OPEN:
                return  # a straggler that started before the breaker opened
            if len(self._outcomes) == self._outcomes.maxlen and not self._outcomes[0]:
                self._failures -= 1
            self._outcomes.append(success)
            if not success:
                self._failures += 1
            calls = len(self._outcomes)
            if calls >= self.policy.min_calls and self._failures >= self.policy.failure_rate * calls:
                self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._probes = 0
        self._probe_successes = 0
        self._set(BreakerState.OPEN)

    def _maybe_half_open(self) -> None:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.policy.open_s:
            self._probes = 0
            self._probe_successes = 0
            self._set(BreakerState.HALF_OPEN)

    def _set(self, state: BreakerState) -> None:
        self._state = state
        self.transitions.append((self._clock(), state))
