"""Resilience against real servers behind a fault-injecting proxy: 5xx, resets, stalls, slow and cut
streams, a server down and back, a server killed mid-stream."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgewise.errors import (
    CircuitOpenError,
    CloudResponseError,
    CloudUnavailableError,
    DeadlineExceededError,
    FallbackError,
)
from edgewise.fallback import BreakerPolicy, BreakerState, Endpoint, RetryPolicy, Router, RouterConfig
from tests.fallback import _servers

pytestmark = pytest.mark.slow
FAULTS = ["500", "503", "reset", "stall", "slow", "cut"]


def _kserve_router(url, *, deadline_s=2.0, breaker=None, mode="only_cloud", **kw):
    endpoint = Endpoint(url, protocol="kserve", model="digits", max_concurrency=kw.pop("max_concurrency", 16),
                        retry=RetryPolicy(attempts=3, base_s=0.02, cap_s=0.2),
                        breaker=breaker or BreakerPolicy(window=20, min_calls=10, failure_rate=0.5, open_s=1.0),
                        **kw)
    return Router(RouterConfig(tensor=endpoint, mode=mode, deadline_s=deadline_s))


def _expected(weights, x):
    return np.maximum(x @ weights["w1"] + weights["b1"], 0) @ weights["w2"] + weights["b2"]


def test_200_concurrent_requests_against_a_server_failing_30_percent(mlserver, digits_weights):
    """Every request gets a correct answer or an edgewise error within its deadline; then the server
    goes down (the breaker opens and fails fast) and comes back (half-open probe, closed again)."""
    rng = random.Random(7)
    lock = threading.Lock()

    def flaky():
        with lock:
            return rng.choice(FAULTS) if rng.random() < 0.3 else "ok"

    weights = np.load(digits_weights["npz"])
    x = digits_weights["x"][:16]
    expected = _expected(weights, x)
    deadline_s = 2.0
    with _servers.proxy(mlserver, flaky) as fp, \
            _kserve_router(fp.url, deadline_s=deadline_s, max_concurrency=48) as router:

        def one(_):
            start = time.monotonic()
            try:
                outcome = router.infer({"pixels": x}).outputs["logits"]
            except FallbackError as exc:
                outcome = exc
            return outcome, time.monotonic() - start

        with ThreadPoolExecutor(200) as pool:
            results = list(pool.map(one, range(200)))
        answers = [o for o, _ in results if isinstance(o, np.ndarray)]
        errors = [o for o, _ in results if not isinstance(o, np.ndarray)]
        assert len(answers) + len(errors) == 200
        # The router stops waiting at the deadline; the slack is for 200 threads sharing the GIL on 2 busy
        # cores (up to ~0.65 s late seen in bench/fallback.py with stalls, when many wake at their deadline).
        slowest = max(t for _, t in results)
        assert slowest <= deadline_s + 1.0, f"slowest request took {slowest:.2f} s"
        print(f"slowest of 200: {slowest:.3f} s")
        for logits in answers:
            np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
        where = [getattr(e, "where", type(e).__name__) for e in errors]
        assert len(answers) >= 100, f"{len(answers)} answers; errors: {where}"
        assert errors, "30 % faults must surface as edgewise errors where retries cannot help"
        kinds = {type(e) for e in errors}
        assert kinds <= {CloudResponseError, CloudUnavailableError, DeadlineExceededError, CircuitOpenError}
        assert fp.counts.get("stall", 0) and fp.counts.get("reset", 0)

        # The server goes away: connection refused, the breaker opens, calls fail fast.
        fp.down()
        breaker = router.tensor_cloud.http.breaker
        for _ in range(30):
            try:
                router.infer({"pixels": x}, deadline_s=1.0)
            except CloudUnavailableError:
                continue
            except CircuitOpenError:
                break
        assert breaker.state is BreakerState.OPEN
        start = time.monotonic()
        with pytest.raises(CircuitOpenError) as info:
            router.infer({"pixels": x})
        assert time.monotonic() - start < 0.05 and info.value.retry_in_s > 0

        # It comes back healthy: after open_s one probe goes through and closes the breaker.
        fp.policy = lambda: "ok"
        fp.up()
        time.sleep(breaker.policy.open_s + 0.05)
        assert breaker.state is BreakerState.HALF_OPEN
        np.testing.assert_allclose(router.infer({"pixels": x}).outputs["logits"], expected, rtol=1e-4, atol=1e-4)
        assert breaker.state is BreakerState.CLOSED
        states = [s for _, s in breaker.transitions]
        assert states[-3:] == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_503_and_429_are_retried_500_is_not(mlserver, digits_weights):
    x = digits_weights["x"][:2]
    script = iter(["503", "429", "ok"])
    with _servers.proxy(mlserver, lambda: next(script)) as fp, _kserve_router(fp.url) as router:
        assert router.infer({"pixels": x}).served_by == "cloud"
        assert fp.counts == {"503": 1, "429": 1, "ok": 1}
    with _servers.proxy(mlserver, lambda: "500") as fp, _kserve_router(fp.url) as router:
        with pytest.raises(CloudResponseError) as info:
            router.infer({"pixels": x})
        assert info.value.status == 500 and fp.counts == {"500": 1}
    with _servers.proxy(mlserver, lambda: "503") as fp, _kserve_router(fp.url) as router:
        with pytest.raises(CloudResponseError, match="HTTP 503.*after 3 attempts") as info:
            router.infer({"pixels": x})
        assert info.value.status == 503 and fp.counts == {"503": 3}


def test_reset_is_not_retried_and_refused_connections_are(mlserver, digits_weights):
    x = digits_weights["x"][:2]
    with _servers.proxy(mlserver, lambda: "reset") as fp, _kserve_router(fp.url) as router:
        with pytest.raises(CloudUnavailableError, match="after sending"):
            router.infer({"pixels": x})
        assert fp.counts == {"reset": 1}
        fp.down()
        start = time.monotonic()
        with pytest.raises(CloudUnavailableError, match="cannot connect after 3 attempt"):
            router.infer({"pixels": x})
        assert time.monotonic() - start < 1.0


def test_stall_ends_at_the_deadline(mlserver, digits_weights):
    with _servers.proxy(mlserver, lambda: "stall") as fp, _kserve_router(fp.url, deadline_s=0.5) as router:
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError) as info:
            router.infer({"pixels": digits_weights["x"][:2]})
        assert 0.45 <= time.monotonic() - start <= 0.8
        assert info.value.deadline_s == 0.5 and "waiting for the answer" in info.value.where


def test_concurrency_limit_queues_and_the_queue_counts_against_the_deadline(mlserver, digits_weights):
    with _servers.proxy(mlserver, lambda: "stall") as fp, \
            _kserve_router(fp.url, deadline_s=0.6, max_concurrency=2) as router:

        def one(_):
            try:
                router.infer({"pixels": digits_weights["x"][:2]})
            except DeadlineExceededError as exc:
                return exc.where
            return "answered"

        with ThreadPoolExecutor(6) as pool:
            wheres = list(pool.map(one, range(6)))
        assert "answered" not in wheres
        assert fp.max_active == 2  # never more than the limit at the server
        assert 2 <= sum(fp.counts.values()) <= sum(1 for w in wheres if "slot" not in w)


TEXT = [{"role": "user", "content": "Count from one to twenty in words."}]


def _text_router(url, deadline_s=60.0, mode="only_cloud"):
    endpoint = Endpoint(url, retry=RetryPolicy(attempts=2, base_s=0.02))
    return Router(RouterConfig(text=endpoint, mode=mode, deadline_s=deadline_s))


def test_slow_stream_completes_or_hits_the_deadline(llama_server):
    with _servers.proxy(llama_server, lambda: "slow") as fp:
        fp.slow_delay_s = 0.005
        with _text_router(fp.url) as router:
            pieces = list(router.chat_stream(TEXT, max_tokens=6))
            assert len(pieces) >= 3
        fp.slow_delay_s = 0.05
        with _text_router(fp.url, deadline_s=1.0) as router:
            start = time.monotonic()
            with pytest.raises(DeadlineExceededError, match="while streaming|waiting for the answer"):
                list(router.chat_stream(TEXT, max_tokens=64))
            assert time.monotonic() - start <= 1.5


def test_cut_stream_is_an_error_not_a_short_answer(llama_server):
    with _servers.proxy(llama_server, lambda: "cut") as fp, _text_router(fp.url) as router, \
            pytest.raises((CloudUnavailableError, CloudResponseError)):
        list(router.chat_stream(TEXT, max_tokens=64))


def test_server_killed_mid_stream(smollm2, tmp_path):
    proc, url = _servers.start_llama_server(smollm2, 1024, tmp_path / "server.log")
    try:
        with _text_router(url) as router:
            stream = router.chat_stream(TEXT, max_tokens=200)
            pieces = iter(stream)
            got = [next(pieces), next(pieces)]
            proc.kill()
            with pytest.raises(CloudUnavailableError, match="stream cut|stalled"):
                got.extend(pieces)
            assert len(got) < 200
    finally:
        _servers.stop(proc)


def test_open_circuit_sends_what_fits_to_the_device(mlserver, digits_weights):
    from edgewise import device_runtime

    model = device_runtime.load(digits_weights["bundle"])
    with _servers.proxy(mlserver, lambda: "500") as fp:
        endpoint = Endpoint(fp.url, protocol="kserve", model="digits",
                            breaker=BreakerPolicy(min_calls=1, failure_rate=1.0, open_s=60))
        with Router(RouterConfig(tensor=endpoint, mode="prefer_cloud"), tensor_model=model) as router:
            first = router.infer({"pixels": digits_weights["x"][:4]})
            assert (first.served_by, first.reason) == ("device", "cloud_unavailable")
            assert router.breaker_state("tensor") is BreakerState.OPEN
            second = router.infer({"pixels": digits_weights["x"][:4]})
            assert (second.served_by, second.reason) == ("device", "circuit_open")
            with pytest.raises(CircuitOpenError):
                router.infer({"pixels": digits_weights["x"][:64]})
            assert fp.counts == {"500": 1}
