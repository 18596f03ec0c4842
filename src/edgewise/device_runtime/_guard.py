"""One caller at a time inside an engine that is not thread-safe, for the price of two list operations.

Why not ``threading.Lock``: measured in place around LiteRT's ``SetTensor``/``Invoke``/``GetTensor``
on a 23 µs MLP, ``with lock:`` cost 2.5-3.5 % (0.6-0.8 µs) although ``timeit`` puts it at ~40 ns. The
lock's ``__enter__`` goes through CPython's argument parser and ``__exit__`` builds an argument tuple,
code the engine has pushed out of the caches by the time the call returns. ``list.pop`` and
``list.append`` are single small C calls, each atomic (the GIL in CPython, a per-object lock in the
free-threaded build); around the same calls they measured 0.1-0.5 %.

The token is a list's one element: ``take`` (``list.pop``) raises IndexError when another caller holds
it, ``give`` (``list.append``) hands it back. A caller that finds it taken waits in ``with guard:``
on a condition; whoever gives the token back wakes one waiter if ``waiting`` is not empty.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class EngineGuard:
    """Mutual exclusion with a lock-free fast path: ``take``/``give`` for the hot path, ``with guard:``
    (which blocks) for everything else.

    Fast path, as the engine runners write it (``wake`` only when someone waits)::

        try:
            take()
        except IndexError:
            ...  # held: go the way that blocks (``with guard:``)
        try:
            ...  # the engine calls
        finally:
            give(True)
            if waiting:
                wake()
    """

    __slots__ = ("_cond", "give", "take", "waiting")

    def __init__(self) -> None:
        token: list[bool] = [True]
        self.take: Callable[[], bool] = token.pop
        self.give: Callable[[bool], None] = token.append
        self.waiting: list[None] = []  # one entry per blocked caller; the fast path only tests its truth
        self._cond = threading.Condition(threading.Lock())

    def wake(self) -> None:
        """Wake one caller blocked in ``__enter__`` (it retries; a fast-path caller may win the token)."""
        with self._cond:
            self._cond.notify()

    def __enter__(self) -> EngineGuard:
        try:
            self.take()
            return self
        except IndexError:
            pass
        with self._cond:
            self.waiting.append(None)
            try:
                while True:
                    try:
                        self.take()
                        return self
                    except IndexError:
                        # The holder gives the token back and then, seeing us in ``waiting``, notifies
                        # under this condition's lock, which ``wait`` releases: no wake-up is lost.
                        self._cond.wait()
            finally:
                self.waiting.pop()

    def __exit__(self, *exc: object) -> None:
        self.give(True)
        if self.waiting:
            self.wake()
