"""HTTP to one endpoint with the resilience rules applied; the protocol clients build on it.

Two paths share one circuit breaker, one concurrency limit and one failure mapping:

* ``request`` (whole answers: chat, completions, v2 infer, metadata) runs on a synchronous
  ``httpx.Client`` in the caller's thread: an async client plus a hop to an event loop cost ~1.45x a
  plain ``httpx.Client.post`` for a 5 ms KServe call here. Its deadline reaches every phase through
  httpx's per-request timeout extension: the dict handed to httpcore answers each phase (pool,
  connect, write, read) with ``min(phase timeout, time left)`` when that phase starts, and the body
  is read in chunks with the deadline checked after each one (a trickling server cannot stretch it).
* ``stream_lines`` (server-sent events) runs on an ``httpx.AsyncClient`` on one background loop
  (``_loop.py``), where cancellation bounds every read of a long stream by the deadline exactly.

Failure mapping (engine exceptions never leak; the original is ``__cause__``):

=========================================  ============================  =======  ===============
what happened                              raised                        retried  breaker failure
=========================================  ============================  =======  ===============
connect refused / connect timeout          CloudUnavailableError         yes      yes
429 / 503 (Retry-After honoured)           CloudResponseError(status)    yes      yes
other 5xx                                  CloudResponseError(status)    no       yes
4xx                                        CloudResponseError(status)    no       no
reset / stall / cut stream after sending   CloudUnavailableError         no       yes
the request's deadline                     DeadlineExceededError         no       yes
queued past the deadline (our own limit)   DeadlineExceededError         no       no
breaker open                               CircuitOpenError              no       -
=========================================  ============================  =======  ===============
"""

from __future__ import annotations

import asyncio
import contextlib
import json as _json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from edgewise._version import __version__
from edgewise.errors import (
    CircuitOpenError,
    CloudResponseError,
    CloudUnavailableError,
    DeadlineExceededError,
    FallbackError,
)
from edgewise.fallback._resilience import CircuitBreaker, Deadline, retry_after_s
from edgewise.fallback.config import Endpoint

_RETRY_STATUS = (429, 503)
_QUEUED = "waiting for a free connection slot"


class _DeadlineTimeouts(dict):
    """httpx's per-request timeout dict, answering each phase with what is left of the deadline.

    httpcore looks a phase's timeout up when the phase starts (``timeouts.get("connect")``, then
    ``"write"``, ``"read"`` for the headers and again for the body), so every phase waits at most
    until the deadline instead of a fixed value chosen before the request was sent.
    """

    def __init__(self, deadline: Deadline, limits: dict[str, float]) -> None:
        super().__init__(limits)
        self._deadline = deadline

    def get(self, key: str, default: Any = None) -> Any:
        limit = super().get(key, default)
        left = max(self._deadline.remaining(), 1e-3)
        return left if limit is None else min(limit, left)

    def __getitem__(self, key: str) -> Any:
        return self.get(key)


class ResilientHTTP:
    """One endpoint: its HTTP clients, circuit breaker and concurrency limit.

    ``transport``: httpx's pluggable transport for the synchronous path (default: real sockets).
    Thread-safe: app threads call ``request`` concurrently; streams run on the fallback loop.
    """

    def __init__(self, endpoint: Endpoint, *, transport: httpx.BaseTransport | None = None) -> None:
        self.endpoint = endpoint
        self.breaker = CircuitBreaker(endpoint.breaker)
        self._slots = threading.BoundedSemaphore(endpoint.max_concurrency)
        headers = {"User-Agent": f"edgewise/{__version__}"}
        token = endpoint.bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        limits = httpx.Limits(max_connections=endpoint.max_concurrency,
                              max_keepalive_connections=endpoint.max_concurrency)
        self._options = {"base_url": endpoint.base_url, "headers": headers, "verify": endpoint.verify,
                         "limits": limits, "follow_redirects": False}
        self._phase_limits = {"connect": endpoint.connect_timeout_s, "read": endpoint.read_timeout_s,
                              "write": endpoint.read_timeout_s, "pool": None}
        self._client = httpx.Client(transport=transport, **self._options)
        self._aclient: httpx.AsyncClient | None = None

    def close(self) -> None:
        self._client.close()

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None

    # -- whole answers (synchronous) -----------------------------------------------------------------

    def request(self, method: str, path: str, *, deadline: Deadline, json: Any = None) -> Any:
        """Send, retry where safe, return the decoded JSON body of a 2xx answer (None when empty)."""
        with self._admitted(deadline) as verdict:
            response = self._send(method, path, json, deadline)
            chunks = []
            try:
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    if deadline.expired:
                        raise self._deadline_error(deadline, "reading the answer")
            except httpx.TimeoutException as exc:
                raise self._timeout_error(exc, deadline, "reading the answer") from exc
            except httpx.TransportError as exc:
                raise CloudUnavailableError(f"{self.endpoint.name}{path}: connection lost while reading the answer "
                                            f"({type(exc).__name__})", endpoint=self.endpoint.name) from exc
            except httpx.HTTPError as exc:  # e.g. a body that does not decode (bad gzip)
                raise self._protocol_error(exc, path) from exc
            finally:
                response.close()
            verdict.append(True)
        body = b"".join(chunks)
        if not body.strip():
            return None  # e.g. KServe's /v2/health/ready: the status is the answer
        try:
            return _json.loads(body)
        except ValueError as exc:
            raise CloudResponseError(f"{self.endpoint.name}{path}: answer is not JSON",
                                     status=response.status_code, endpoint=self.endpoint.name) from exc

    def _send(self, method: str, path: str, json: Any, deadline: Deadline) -> httpx.Response:
        policy = self.endpoint.retry
        for attempt in range(policy.attempts):
            request = self._client.build_request(method, path, json=json)
            request.extensions["timeout"] = _DeadlineTimeouts(deadline, self._phase_limits)
            try:
                response = self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                time.sleep(self._resend_wait(exc, attempt, deadline, path))
                continue
            if response.status_code < 400:
                return response
            try:
                detail = _detail(response.read()[:300])
            except httpx.HTTPError:
                detail = ""
            finally:
                response.close()
            wait = self._retry_wait(response, attempt, deadline)
            if wait is None:
                raise self._status_error(response.status_code, path, detail, attempt)
            time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.contextmanager
    def _admitted(self, deadline: Deadline) -> Iterator[list[bool]]:
        """Breaker admission + a concurrency slot around one request; records the verdict."""
        with self._judged() as verdict:
            if not self._slots.acquire(timeout=deadline.remaining()):
                raise self._deadline_error(deadline, _QUEUED)
            try:
                yield verdict
            finally:
                self._slots.release()

    # -- streams (async, on the fallback loop) --------------------------------------------------------

    async def stream_lines(self, method: str, path: str, *, deadline: Deadline, json: Any = None,
                           last: Callable[[str], bool] | None = None) -> AsyncIterator[str]:
        """Lines of a streamed 2xx answer; every read is bounded by ``deadline``.

        ``last`` names the protocol's end-of-answer line (OpenAI's ``data: [DONE]``): the answer is
        then complete, so the endpoint is judged a success, the connection and its slot are given
        back, and only then is that line yielded. A consumer stops reading there; without ``last``
        its stop would leave the breaker no verdict (a half-open breaker probed by streams alone
        would never close). A caller that stops earlier must close this iterator
        (``contextlib.aclosing``) so the slot and the breaker's admission come back at once.
        """
        if self._aclient is None:
            self._aclient = httpx.AsyncClient(**self._options)
        final = None
        with self._judged() as verdict:  # a slot is awaited here, not blocked on: the loop serves others
            if not await self._acquire_slot(deadline):
                raise self._deadline_error(deadline, _QUEUED)
            try:
                response = await self._asend(method, path, json, deadline)
                received = 0
                lines = response.aiter_lines()
                try:
                    while True:
                        try:
                            line = await _within(lines.__anext__(), deadline)
                        except StopAsyncIteration:
                            break
                        except TimeoutError:
                            raise self._deadline_error(deadline, f"while streaming ({received} lines)") from None
                        except httpx.TimeoutException as exc:
                            raise CloudUnavailableError(
                                f"{self.endpoint.name}: stream stalled after {received} lines ({type(exc).__name__})",
                                endpoint=self.endpoint.name) from exc
                        except httpx.TransportError as exc:
                            raise CloudUnavailableError(
                                f"{self.endpoint.name}: stream cut after {received} lines ({type(exc).__name__})",
                                endpoint=self.endpoint.name) from exc
                        except httpx.HTTPError as exc:
                            raise self._protocol_error(exc, path) from exc
                        received += 1
                        if last is not None and last(line):
                            final = line
                            break
                        yield line
                finally:
                    await response.aclose()
                verdict.append(True)
            finally:
                self._slots.release()
        if final is not None:
            yield final

    async def _acquire_slot(self, deadline: Deadline) -> bool:
        while not self._slots.acquire(blocking=False):
            if deadline.expired:
                return False
            await asyncio.sleep(min(0.005, deadline.remaining()))
        return True

    async def _asend(self, method: str, path: str, json: Any, deadline: Deadline) -> httpx.Response:
        policy = self.endpoint.retry
        client = self._aclient
        for attempt in range(policy.attempts):
            request = client.build_request(method, path, json=json)
            request.extensions["timeout"] = _DeadlineTimeouts(deadline, self._phase_limits)
            try:
                response = await _within(client.send(request, stream=True), deadline)
            except TimeoutError:
                raise self._deadline_error(deadline, "waiting for the answer") from None
            except httpx.HTTPError as exc:
                await asyncio.sleep(self._resend_wait(exc, attempt, deadline, path))
                continue
            if response.status_code < 400:
                return response
            try:
                detail = _detail((await _within(response.aread(), deadline))[:300])
            except (TimeoutError, httpx.HTTPError):
                detail = ""
            finally:
                await response.aclose()
            wait = self._retry_wait(response, attempt, deadline)
            if wait is None:
                raise self._status_error(response.status_code, path, detail, attempt)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- shared ---------------------------------------------------------------------------------------

    def _resend_wait(self, exc: httpx.HTTPError, attempt: int, deadline: Deadline, path: str) -> float:
        """Seconds to wait before sending again after ``exc``, or the FallbackError to raise.

        Only a failed connection is retried: nothing reached the server. Anything after the
        request was sent may have been acted on, and is reported instead. One ladder for the
        synchronous and the async sender (they differ only in how they sleep).
        """
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            policy = self.endpoint.retry
            wait = policy.backoff(attempt)
            if attempt == policy.attempts - 1 or wait >= deadline.remaining():
                raise self._connect_error(exc, attempt, deadline) from exc
            return wait
        if isinstance(exc, httpx.TimeoutException):
            raise self._timeout_error(exc, deadline, "waiting for the answer") from exc
        if isinstance(exc, httpx.TransportError):
            raise self._sent_error(exc, path) from exc
        raise self._protocol_error(exc, path) from exc

    @contextlib.contextmanager
    def _judged(self) -> Iterator[list[bool]]:
        """Breaker admission around one request (whole answer or stream) and its verdict on the endpoint.

        The body appends True once the answer is complete; a FallbackError is judged by its kind
        (``_judge``); anything else — cancelled, abandoned, queued out — leaves no verdict and only
        gives the breaker's admission back.
        """
        if not self.breaker.acquire():
            raise self._circuit_open()
        verdict: list[bool] = []
        try:
            yield verdict
        except FallbackError as exc:
            _judge(exc, verdict)
            raise
        finally:
            if verdict:
                self.breaker.record(verdict[-1])
            else:
                self.breaker.release()

    def _retry_wait(self, response: httpx.Response, attempt: int, deadline: Deadline) -> float | None:
        """Seconds to wait before retrying this answer, or None when it must not be retried."""
        policy = self.endpoint.retry
        if response.status_code not in _RETRY_STATUS or attempt == policy.attempts - 1:
            return None
        after = retry_after_s(response.headers.get("Retry-After"))
        wait = policy.backoff(attempt) if after is None else after
        if wait > policy.max_retry_after_s or wait >= deadline.remaining():
            return None
        return wait

    def _circuit_open(self) -> CircuitOpenError:
        retry_in = self.breaker.retry_in_s()
        return CircuitOpenError(f"{self.endpoint.name}: circuit open after repeated failures; "
                                f"next probe in {retry_in:.1f} s", endpoint=self.endpoint.name, retry_in_s=retry_in)

    def _deadline_error(self, deadline: Deadline, where: str) -> DeadlineExceededError:
        return DeadlineExceededError(f"{self.endpoint.name}: deadline of {deadline.budget_s:g} s exceeded {where}",
                                     deadline_s=deadline.budget_s, where=where)

    def _timeout_error(self, exc: Exception, deadline: Deadline, where: str) -> FallbackError:
        if deadline.expired:
            return self._deadline_error(deadline, where)
        return CloudUnavailableError(f"{self.endpoint.name}: no data within the read timeout {where} "
                                     f"({type(exc).__name__})", endpoint=self.endpoint.name)

    def _connect_error(self, exc: Exception, attempt: int, deadline: Deadline) -> FallbackError:
        if deadline.expired:
            return self._deadline_error(deadline, "connecting")
        return CloudUnavailableError(
            f"{self.endpoint.name}: cannot connect after {attempt + 1} attempt(s) ({type(exc).__name__})",
            endpoint=self.endpoint.name)

    def _sent_error(self, exc: Exception, path: str) -> CloudUnavailableError:
        return CloudUnavailableError(f"{self.endpoint.name}{path}: connection failed after sending "
                                     f"({type(exc).__name__}: {exc})", endpoint=self.endpoint.name)

    def _protocol_error(self, exc: Exception, path: str) -> CloudResponseError:
        return CloudResponseError(f"{self.endpoint.name}{path}: unreadable answer ({type(exc).__name__}: {exc})",
                                  endpoint=self.endpoint.name)

    def _status_error(self, status: int, path: str, detail: str, attempt: int) -> CloudResponseError:
        attempts = f" after {attempt + 1} attempts" if attempt else ""
        return CloudResponseError(f"{self.endpoint.name}{path}: HTTP {status}{detail}{attempts}",
                                  status=status, endpoint=self.endpoint.name, hint=_status_hint(status))


def _judge(exc: FallbackError, verdict: list[bool]) -> None:
    """The breaker's verdict for a failed request (none for our own queue)."""
    if isinstance(exc, DeadlineExceededError) and exc.where == _QUEUED:
        return
    if isinstance(exc, CloudResponseError):
        verdict.append(exc.status is not None and 400 <= exc.status < 500 and exc.status != 429)
        return
    verdict.append(False)


async def _within(awaitable: Any, deadline: Deadline) -> Any:
    """Await with what is left of the deadline; TimeoutError when it passes.

    ``asyncio.timeout`` (3.11+) cancels in place; ``wait_for`` would wrap each await in a new task.
    """
    left = deadline.remaining()
    if left <= 0:
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        raise TimeoutError
    if _timeout_scope is None:  # Python 3.10
        return await asyncio.wait_for(awaitable, left)
    async with _timeout_scope(left):
        return await awaitable


_timeout_scope = getattr(asyncio, "timeout", None)


def _detail(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    return f": {text}" if text else ""


def _status_hint(status: int) -> str | None:
    if status in (401, 403):
        return "Check the bearer token (config `token` or the EDGEWISE_CLOUD_TOKEN environment variable)."
    if status == 404:
        return "Check the endpoint URL and the model name (and version) on the server."
    if status in (429, 503):
        return "The endpoint is overloaded; the router retried within the deadline. Retry later or raise the limit."
    if status >= 500:
        return "The endpoint failed; requests the device can serve still run there."
    return None
