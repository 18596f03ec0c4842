"""HTTP to one endpoint with the resilience rules applied; the protocol clients build on it.

Async inside (httpx.AsyncClient on one background event loop, ``_loop.py``) because a deadline
must cover everything — queueing for a slot, connecting, retrying, waiting and every read of a
stream — and only cancellation bounds all of them at once. httpx's own timeouts are per phase.

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
breaker open                               CircuitOpenError              no       -
=========================================  ============================  =======  ===============
"""

from __future__ import annotations

import asyncio
import contextlib
import json as _json
from collections.abc import AsyncIterator
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


class ResilientHTTP:
    """One endpoint: an httpx.AsyncClient, its circuit breaker and its concurrency limit.

    ``transport`` is httpx's pluggable transport (default: real sockets). Create and use it on the
    fallback event loop only (``_loop.shared_loop()``); the breaker may be read from any thread.
    """

    def __init__(self, endpoint: Endpoint, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.endpoint = endpoint
        self.breaker = CircuitBreaker(endpoint.breaker)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        headers = {"User-Agent": f"edgewise/{__version__}"}
        token = endpoint.bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._headers = headers

    def _ensure(self) -> httpx.AsyncClient:
        if self._client is None:
            limits = httpx.Limits(max_connections=self.endpoint.max_concurrency,
                                  max_keepalive_connections=self.endpoint.max_concurrency)
            self._client = httpx.AsyncClient(
                base_url=self.endpoint.base_url, headers=self._headers, verify=self.endpoint.verify,
                transport=self._transport, limits=limits, follow_redirects=False,
                timeout=httpx.Timeout(self.endpoint.read_timeout_s, connect=self.endpoint.connect_timeout_s),
            )
            self._slots = asyncio.Semaphore(self.endpoint.max_concurrency)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _timeout(self, deadline: Deadline) -> httpx.Timeout:
        left = max(deadline.remaining(), 1e-3)
        return httpx.Timeout(min(self.endpoint.read_timeout_s, left),
                             connect=min(self.endpoint.connect_timeout_s, left))

    def _circuit_open(self) -> CircuitOpenError:
        retry_in = self.breaker.retry_in_s()
        return CircuitOpenError(f"{self.endpoint.name}: circuit open after repeated failures; "
                                f"next probe in {retry_in:.1f} s", endpoint=self.endpoint.name, retry_in_s=retry_in)

    def _deadline_error(self, deadline: Deadline, where: str) -> DeadlineExceededError:
        return DeadlineExceededError(f"{self.endpoint.name}: deadline of {deadline.budget_s:g} s exceeded {where}",
                                     deadline_s=deadline.budget_s, where=where)

    async def request(self, method: str, path: str, *, deadline: Deadline, json: Any = None) -> Any:
        """Send, retry where safe, return the decoded JSON body of a 2xx answer (None when empty)."""
        async with self._call(deadline) as verdict:
            response = await self._send(method, path, json, deadline, stream=False)
            try:
                body = await _within(response.aread(), deadline)
            except TimeoutError:
                await response.aclose()
                raise self._deadline_error(deadline, "reading the answer") from None
            except httpx.TransportError as exc:
                raise CloudUnavailableError(f"{self.endpoint.name}: connection lost while reading the answer "
                                            f"({type(exc).__name__})", endpoint=self.endpoint.name) from exc
            verdict.append(True)
            if not body.strip():
                return None  # e.g. KServe's /v2/health/ready: the status is the answer
            try:
                return _json.loads(body)
            except ValueError as exc:
                raise CloudResponseError(f"{self.endpoint.name}{path}: answer is not JSON",
                                         status=response.status_code, endpoint=self.endpoint.name) from exc

    async def stream_lines(self, method: str, path: str, *, deadline: Deadline, json: Any = None,
                           ) -> AsyncIterator[str]:
        """Lines of a streamed 2xx answer; every read is bounded by ``deadline``."""
        async with self._call(deadline) as verdict:
            response = await self._send(method, path, json, deadline, stream=True)
            lines = response.aiter_lines()
            received = 0
            try:
                while True:
                    try:
                        line = await _within(lines.__anext__(), deadline)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        raise self._deadline_error(deadline, f"while streaming ({received} lines received)") from None
                    except httpx.TimeoutException as exc:
                        raise CloudUnavailableError(
                            f"{self.endpoint.name}: stream stalled after {received} lines ({type(exc).__name__})",
                            endpoint=self.endpoint.name) from exc
                    except httpx.TransportError as exc:
                        raise CloudUnavailableError(
                            f"{self.endpoint.name}: stream cut after {received} lines ({type(exc).__name__})",
                            endpoint=self.endpoint.name) from exc
                    received += 1
                    yield line
            finally:
                await response.aclose()
            verdict.append(True)

    @contextlib.asynccontextmanager
    async def _call(self, deadline: Deadline) -> AsyncIterator[list[bool]]:
        """Breaker admission + a concurrency slot around one request; records the verdict.

        The body appends True on success; any FallbackError is a failure unless it is a 4xx
        answer (the endpoint is healthy, the request is not); cancellation records nothing.
        """
        self._ensure()
        if not self.breaker.acquire():
            raise self._circuit_open()
        verdict: list[bool] = []
        try:
            try:
                await _within(self._slots.acquire(), deadline)
            except TimeoutError:
                # our own queue, not the endpoint's failure: no verdict for the breaker (below)
                raise self._deadline_error(deadline, "waiting for a free connection slot") from None
            try:
                yield verdict
            finally:
                self._slots.release()
        except DeadlineExceededError as exc:
            if exc.where != "waiting for a free connection slot":
                verdict.append(False)
            raise
        except CloudResponseError as exc:
            verdict.append(exc.status is not None and 400 <= exc.status < 500 and exc.status != 429)
            raise
        except FallbackError:
            verdict.append(False)
            raise
        finally:
            if verdict:
                self.breaker.record(verdict[-1])
            else:
                self.breaker.release()

    async def _send(self, method: str, path: str, json: Any, deadline: Deadline, *, stream: bool) -> httpx.Response:
        policy = self.endpoint.retry
        client = self._client
        for attempt in range(policy.attempts):
            last = attempt == policy.attempts - 1
            request = client.build_request(method, path, json=json, timeout=self._timeout(deadline))
            try:
                response = await _within(client.send(request, stream=stream), deadline)
            except TimeoutError:
                raise self._deadline_error(deadline, "waiting for the answer") from None
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                wait = policy.backoff(attempt)
                if last or wait >= deadline.remaining():
                    raise CloudUnavailableError(
                        f"{self.endpoint.name}: cannot connect after {attempt + 1} attempt(s) ({type(exc).__name__})",
                        endpoint=self.endpoint.name) from exc
                await asyncio.sleep(wait)
                continue
            except httpx.TimeoutException as exc:
                raise CloudUnavailableError(f"{self.endpoint.name}{path}: no answer within the read timeout "
                                            f"({type(exc).__name__})", endpoint=self.endpoint.name) from exc
            except httpx.TransportError as exc:
                raise CloudUnavailableError(f"{self.endpoint.name}{path}: connection failed after sending "
                                            f"({type(exc).__name__}: {exc})", endpoint=self.endpoint.name) from exc
            if response.status_code < 400:
                return response
            detail = await _error_detail(response, deadline)
            if response.status_code in _RETRY_STATUS and not last:
                after = retry_after_s(response.headers.get("Retry-After"))
                wait = policy.backoff(attempt) if after is None else after
                if wait <= policy.max_retry_after_s and wait < deadline.remaining():
                    await asyncio.sleep(wait)
                    continue
            raise CloudResponseError(
                f"{self.endpoint.name}{path}: HTTP {response.status_code}{detail}"
                + (f" after {attempt + 1} attempts" if attempt else ""),
                status=response.status_code, endpoint=self.endpoint.name,
                hint=_status_hint(response.status_code))
        raise AssertionError("unreachable")  # pragma: no cover


async def _within(awaitable: Any, deadline: Deadline) -> Any:
    left = deadline.remaining()
    if left <= 0:
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        raise TimeoutError
    return await asyncio.wait_for(awaitable, left)


async def _error_detail(response: httpx.Response, deadline: Deadline) -> str:
    try:
        body = await _within(response.aread(), deadline)
    except (TimeoutError, httpx.HTTPError):
        body = b""
    finally:
        await response.aclose()
    text = body[:300].decode("utf-8", "replace").strip()
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
