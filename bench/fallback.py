"""Fallback router: decision time, cloud overhead vs a bare httpx call, latency under faults.

    python -m bench.fallback      -> bench/results/fallback.json

* ``decision_us``: ``decide()`` per request over a mix of requests (fits, context overflow, input
  too large, host state) and breaker states; ``preflight_us`` adds what the router does around it
  for a tensor request (input sizes, shape check against the bundle, breaker state).
* ``cloud_overhead_ratio``: ``Router.infer`` (only_cloud) to MLServer (KServe v2) vs a bare
  ``httpx.Client.post`` of the same JSON to the same server, interleaved in the same run. The bare
  call also converts the array to and from JSON, as an app without edgewise would. ``text_overhead_ratio``:
  the same for ``Router.chat`` vs a bare post to llama.cpp's server when that is installed.
* ``p99_ms_under_faults``: 200 concurrent requests (deadline 2 s) through a proxy failing 30 % of
  them with 500 / 503 / reset / slow / cut; ``p99_ms_with_stalls`` adds stalls (bounded by the deadline).
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from tests.fallback import _servers

from bench._common import interleaved_ratio, table, write
from edgewise.errors import DataError, FallbackError
from edgewise.fallback import (
    BreakerPolicy,
    BreakerState,
    DeviceFacts,
    Endpoint,
    HostState,
    Mode,
    RequestFacts,
    RetryPolicy,
    Router,
    RouterConfig,
    decide,
)
from edgewise.fallback._decision import shape_problem


def decision_us() -> dict:
    requests = [RequestFacts(prompt_tokens=100, requested_tokens=64), RequestFacts(prompt_tokens=900,
                requested_tokens=64), RequestFacts(input_bytes=10_000), RequestFacts(input_bytes=100)]
    devices = [DeviceFacts(context_size=512, max_input_bytes=4096),
               DeviceFacts(context_size=512, host=HostState(battery_pct=9, charging=False))]
    cases = [(r, d, m, b) for r in requests for d in devices for m in Mode
             for b in (BreakerState.CLOSED, BreakerState.OPEN, None)]
    n = 20_000
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(n):
            decide(*cases[i % len(cases)])
        times.append((time.perf_counter() - start) / n)
    specs = [("pixels", ("batch", 64))]
    limits = {"max_batch": 8, "max_input_bytes": 2048}
    x = np.zeros((4, 64), np.float32)
    pre = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n // 4):
            facts = RequestFacts(input_bytes=x.nbytes, shape_problem=shape_problem({"pixels": x.shape}, specs, limits))
            decide(facts, DeviceFacts(max_input_bytes=2048), Mode.PREFER_ON_DEVICE, BreakerState.CLOSED)
        pre.append((time.perf_counter() - start) / (n // 4))
    return {"decision_us": 1e6 * statistics.median(times), "preflight_us": 1e6 * statistics.median(pre),
            "decision_cases": len(cases)}


def _mlp(folder: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    w = {"w1": rng.standard_normal((64, 32)).astype(np.float32), "b1": np.zeros(32, np.float32),
         "w2": rng.standard_normal((32, 10)).astype(np.float32), "b2": np.zeros(10, np.float32)}
    np.savez(folder / "weights.npz", **w)
    return folder / "weights.npz", rng.random((8, 64)).astype(np.float32)


def cloud_overhead(url: str, x: np.ndarray) -> dict:
    body = {"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32", "data": None}]}
    bare = httpx.Client(base_url=url, timeout=30)

    def raw():
        body["inputs"][0]["data"] = x.ravel().tolist()
        out = bare.post("/v2/models/digits/infer", json=body).json()["outputs"][0]
        return np.asarray(out["data"], np.float32).reshape(out["shape"])

    with Router(RouterConfig(tensor=Endpoint(url, protocol="kserve", model="digits"), mode="only_cloud")) as router:
        np.testing.assert_allclose(router.infer({"pixels": x}).outputs["logits"], raw(), rtol=1e-5)
        result = interleaved_ratio(lambda: router.infer({"pixels": x}), raw, calls=10, rounds=41)
    bare.close()
    return result


def text_overhead(gguf: Path, folder: Path) -> dict | None:
    proc, url = _servers.start_llama_server(gguf, 1024, folder / "llama.log")
    try:
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        bare = httpx.Client(base_url=url, timeout=60)

        def raw():
            return bare.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 4,
                                                           "temperature": 0.0}).json()["choices"][0]

        with Router(RouterConfig(text=Endpoint(url), mode="only_cloud")) as router:
            result = interleaved_ratio(lambda: router.chat(messages, max_tokens=4), raw, calls=5, rounds=9)
        bare.close()
        return result
    finally:
        _servers.stop(proc)


def under_faults(url: str, x: np.ndarray, faults: list[str]) -> dict:
    rng = random.Random(1)
    lock = threading.Lock()

    def flaky():
        with lock:
            return rng.choice(faults) if rng.random() < 0.3 else "ok"

    with _servers.proxy(url, flaky) as fp:
        endpoint = Endpoint(fp.url, protocol="kserve", model="digits",
                            retry=RetryPolicy(attempts=3, base_s=0.02, cap_s=0.2),
                            breaker=BreakerPolicy(window=20, min_calls=10, failure_rate=0.5, open_s=1.0))
        with Router(RouterConfig(tensor=endpoint, mode="only_cloud", deadline_s=2.0)) as router:

            def one(_):
                start = time.perf_counter()
                try:
                    router.infer({"pixels": x})
                    ok = True
                except FallbackError:
                    ok = False
                return ok, 1e3 * (time.perf_counter() - start)

            with ThreadPoolExecutor(200) as pool:
                results = list(pool.map(one, range(200)))
    ms = sorted(t for _, t in results)
    return {"p50_ms": ms[len(ms) // 2], "p99_ms": ms[int(0.99 * len(ms)) - 1], "max_ms": ms[-1],
            "answered": sum(ok for ok, _ in results), "errors": sum(not ok for ok, _ in results),
            "faults_injected": dict(sorted(fp.counts.items()))}


def main() -> int:
    decision = decision_us()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights, x = _mlp(folder)
        server, url = _servers.start_mlserver(folder, weights, folder / "mlserver.log")
        try:
            overhead = cloud_overhead(url, x)
            faults = under_faults(url, x, ["500", "503", "reset", "slow", "cut"])
            stalls = under_faults(url, x, ["500", "503", "reset", "slow", "cut", "stall"])
        finally:
            _servers.stop(server)
        text = None
        try:
            import llama_cpp.server  # noqa: F401

            from edgewise.demo.llm import smollm2_gguf

            text = text_overhead(smollm2_gguf(), folder)
        except (ImportError, DataError):
            pass
    data = {
        "decision_us": round(decision["decision_us"], 3), "preflight_us": round(decision["preflight_us"], 3),
        "cloud_overhead_ratio": round(overhead["ratio"], 4),
        "cloud_ms": {"bare_httpx": round(overhead["raw_ms"], 3), "router": round(overhead["edgewise_ms"], 3)},
        "text_overhead_ratio": round(text["ratio"], 4) if text else None,
        "text_ms": {"bare_httpx": round(text["raw_ms"], 2), "router": round(text["edgewise_ms"], 2)} if text else None,
        "p99_ms_under_faults": round(faults["p99_ms"], 1), "faults": faults,
        "p99_ms_with_stalls": round(stalls["p99_ms"], 1), "faults_with_stalls": stalls,
        "goals": {"decision_us": 50, "cloud_overhead_ratio": 1.05},
        "setup": "KServe: MLServer 1.7.1 numpy MLP, batch 8x64 FP32; faults: 200 concurrent, 30 % faulty, deadline 2 s",
    }
    print(table([
        ["decision_us", data["decision_us"], "<= 50"],
        ["preflight_us (tensor request)", data["preflight_us"], ""],
        ["cloud_overhead_ratio (KServe)", data["cloud_overhead_ratio"], "<= 1.05"],
        ["text_overhead_ratio (OpenAI chat)", data["text_overhead_ratio"] or "-", ""],
        ["p99_ms_under_faults", data["p99_ms_under_faults"], ""],
        ["p99_ms_with_stalls (deadline 2000)", data["p99_ms_with_stalls"], ""],
    ], ["metric", "value", "goal"]))
    write("fallback", data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
