"""One background event loop per process for the cloud clients, behind a blocking call.

The router's API is synchronous (device engines block anyway); the cloud side is async so that
one cancellation bounds a whole request (see ``_http.py``). Requests from many app threads share
the loop, its connection pools and each endpoint's concurrency limit.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def shared_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="edgewise-fallback", daemon=True).start()
            _loop = loop
        return _loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the shared loop and wait for it (the coroutine bounds its own time)."""
    loop = shared_loop()
    if _running_on(loop):
        raise RuntimeError("edgewise.fallback's blocking API was called from its own event loop")
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


def iterate(agen: AsyncIterator[T]) -> Iterator[T]:
    """A blocking iterator over an async iterator that lives on the shared loop."""
    loop = shared_loop()
    try:
        while True:
            try:
                yield asyncio.run_coroutine_threadsafe(_next(agen), loop).result()
            except StopAsyncIteration:
                return
    finally:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            asyncio.run_coroutine_threadsafe(aclose(), loop).result()


async def _next(agen: AsyncIterator[T]) -> T:
    return await agen.__anext__()


def _running_on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
