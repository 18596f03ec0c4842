"""A bounded hand-off from request threads to one background thread, built so the caller pays ~nothing.

``put`` is a length check and a ``deque.append`` (atomic in CPython): no lock, no condition variable,
no wake-up of the worker — waking a thread on every sampled request costs the caller a futex call and
a GIL hand-over. The worker instead wakes every ``interval`` seconds (or when ``flush``/``close`` asks),
drains everything queued and handles it in one go, at the lowest CPU priority the OS gives a thread.
A full mailbox sheds the item and counts it: a slow worker never slows the caller.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any


def lower_priority() -> None:
    """Run the calling (background) thread at the lowest CPU priority where the OS allows it per thread.

    On Linux a thread is a task with its own nice value: at nice 19 the scheduler gives it ~1.5 % of
    a core the app's threads want, so shadow runs and log writes use idle CPU, not the caller's.
    Elsewhere (macOS, Windows) this is a no-op and the sampling rate alone bounds the cost.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class Mailbox:
    """``handle(items)`` runs on a daemon thread for everything ``put`` since its last run."""

    def __init__(self, handle: Callable[[list[Any]], None], *, capacity: int, interval: float, name: str,
                 tick: Callable[[], None] | None = None) -> None:
        self.capacity = capacity
        self.interval = interval
        self.shed = 0
        self.handled = 0
        self.failures = 0
        self._items: deque = deque()
        self._handle = handle
        self._tick = tick
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._waiters: list[threading.Event] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: Any) -> bool:
        """Hot path: O(1), never blocks. False (and counted) when the mailbox is full."""
        if len(self._items) >= self.capacity:
            self.count_shed()
            return False
        self._items.append(item)
        return True

    @property
    def queue(self) -> deque:
        """The deque ``put`` appends to, for a caller that inlines ``put`` (a method call costs µs on
        a path the caches have forgotten): append only while ``len(queue) < capacity``, else
        ``count_shed()``."""
        return self._items

    def count_shed(self) -> None:
        with self._lock:
            self.shed += 1

    def __len__(self) -> int:
        return len(self._items)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything put before this call was handled."""
        if not self._thread.is_alive():
            return True
        done = threading.Event()
        with self._lock:
            self._waiters.append(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        lower_priority()
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            with self._lock:
                waiters, self._waiters = self._waiters, []
                stopping = self._stopping
            items = []
            with contextlib.suppress(IndexError):
                while True:
                    items.append(self._items.popleft())
            if items:
                try:
                    self._handle(items)
                except Exception:  # a failing handler must not kill the worker: count it and go on
                    self.failures += 1
                self.handled += len(items)
            if self._tick is not None:
                with contextlib.suppress(Exception):
                    self._tick()
            for waiter in waiters:
                waiter.set()
            if stopping:
                return
