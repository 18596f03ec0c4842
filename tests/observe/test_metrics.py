"""Metrics of an observed model: exact counts from many threads, Prometheus text, JSON snapshot, fallbacks."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgewise import device_runtime
from edgewise.device_runtime import Metrics, Model, ObserveConfig, observed
from edgewise.errors import InputError


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_off_leaves_model_run_untouched(mlp_onnx):
    model = device_runtime.load(mlp_onnx)
    before = type(model).run
    watched = observed(model, metrics=Metrics(), sample_rate=0.0)
    assert type(model).run is before is Model.run  # observation never patches the Model
    assert not hasattr(model, "__dict__")  # slots: nothing can be attached to a plain Model either
    x = np.ones((2, 16), np.float32)
    np.testing.assert_array_equal(watched.run({"x": x})["y"], model.run({"x": x})["y"])
    watched.close()


def test_counts_are_exact_across_threads_and_exported(mlp_onnx):
    metrics = Metrics()
    watched = observed(device_runtime.load(mlp_onnx), metrics=metrics, sample_rate=0.0)
    x = np.ones((1, 16), np.float32)

    def worker():
        for _ in range(300):
            watched.run(x)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with pytest.raises(InputError):
        watched.run({"x": np.ones((1, 15), np.float32)})
    watched.record_fallback(served_by="cloud", reason="context_overflow")
    device_runtime.record_fallback("mlp", served_by="cloud", reason="model_missing", metrics=metrics)

    snap = metrics.snapshot()
    (series,) = snap["models"]
    assert series["requests"] == 1200 and series["errors"] == {"InputError": 1}
    assert series["backend"] == "onnxruntime" and series["device"] == "cpu"
    assert series["latency_buckets_ms"][-1] == ["+Inf", 1200]
    assert 0 < series["latency_mean_ms"] < 1000
    json.dumps(snap)  # plain data
    assert {(f["reason"], f["count"]) for f in snap["fallbacks"]} == {("context_overflow", 1), ("model_missing", 1)}

    fams = families(metrics.prometheus_text())
    requests = fams["edgewise_requests"].samples
    assert [s.value for s in requests if s.name == "edgewise_requests_total"] == [1200.0]
    latency = {s.labels["le"]: s.value for s in fams["edgewise_latency_seconds"].samples
               if s.name.endswith("_bucket")}
    assert latency["+Inf"] == 1200.0
    assert [s.value for s in fams["edgewise_errors"].samples if s.name.endswith("_total")] == [1.0]
    fallbacks = {s.labels["reason"]: s.value for s in fams["edgewise_fallbacks"].samples
                 if s.name.endswith("_total")}
    assert fallbacks == {"context_overflow": 1.0, "model_missing": 1.0}
    watched.close()


def test_metrics_need_no_prometheus_client_until_exported(mlp_onnx):
    """A light device install: observing and JSON snapshots work without importing prometheus_client."""
    code = (
        "import sys, numpy as np\n"
        "from edgewise import device_runtime as d\n"
        f"w = d.observed(d.load({str(mlp_onnx)!r}), metrics=d.Metrics(), sample_rate=0)\n"
        "w.run(np.ones((1, 16), np.float32)); assert w.snapshot()['metrics']['requests'] == 1\n"
        "assert 'prometheus_client' not in sys.modules, 'imported eagerly'\n"
        "w.close(); print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_bad_config_is_an_edgewise_error():
    with pytest.raises(InputError, match="sample_rate"):
        ObserveConfig(sample_rate=1.5)
    with pytest.raises(InputError, match="inputs policy"):
        ObserveConfig(inputs="everything")


def test_series_bins_like_bisect_and_loses_nothing_while_folding_concurrently():
    """Latencies are appended on the hot path and binned later; a fold racing the appends must
    neither drop nor double-count one, and bucket edges are Prometheus' ``le`` (bisect_left)."""
    from bisect import bisect_left

    from edgewise.device_runtime._metrics import LATENCY_BUCKETS, Series, SeriesKey

    series = Series(SeriesKey("m", "1"))
    rng = np.random.default_rng(0)
    values = [*LATENCY_BUCKETS, *(b * 1.0000001 for b in LATENCY_BUCKETS), *rng.exponential(1e-3, 20_000), 99.0]
    per_thread = [values[i::4] for i in range(4)]
    stop = threading.Event()

    def folder():
        while not stop.is_set():
            series.fold()

    def recorder(chunk):
        for v in chunk:
            series.record(float(v))

    fold_thread = threading.Thread(target=folder)
    fold_thread.start()
    threads = [threading.Thread(target=recorder, args=(c,)) for c in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    fold_thread.join()
    count, total, buckets = series.totals()
    expected = [0] * (len(LATENCY_BUCKETS) + 1)
    for v in values:
        expected[bisect_left(LATENCY_BUCKETS, float(v))] += 1
    assert count == len(values) and buckets == expected
    assert total == pytest.approx(sum(float(v) for v in values))
    assert series.pending() == 0
