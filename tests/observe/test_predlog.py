"""The prediction log: sampled records with the privacy policy, a cap that holds under a flood, restarts."""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import pytest

from edgewise import device_runtime
from edgewise.device_runtime import Metrics, PredictionLog, observed
from edgewise.device_runtime._predlog import decode_tensors


def rec(i: int) -> dict:
    return {"kind": "prediction", "model": "m", "version": "1", "seq": i, "payload": "x" * 100}


def test_cap_holds_under_a_flood_oldest_dropped_first_and_counted(tmp_path):
    log = PredictionLog(tmp_path / "log", max_records=500)
    sizes = []
    for start in range(0, 20_000, 250):
        log.append([rec(i) for i in range(start, start + 250)])
        stats = log.stats()
        assert stats["records"] <= 500  # never past the cap, checked after every write
        sizes.append(log.path.stat().st_size)
    stats = log.stats()
    assert stats["written"] == 20_000 and stats["dropped"] == 19_500 and stats["records"] == 500
    assert [r["seq"] for r in log.records(limit=500)] == list(range(19_500, 20_000))  # the newest survive
    assert sizes[-1] <= 2 * sizes[len(sizes) // 4] + (1 << 20)  # freed pages are reused: the file stops growing
    log.close()
    reopened = PredictionLog(tmp_path / "log", max_records=500)  # survives a restart, counters included
    assert reopened.stats()["dropped"] == 19_500 and reopened.stats()["records"] == 500


def test_byte_cap(tmp_path):
    log = PredictionLog(tmp_path / "log", max_records=100_000, max_bytes=50_000)
    for start in range(0, 3000, 100):
        log.append([rec(i) for i in range(start, start + 100)])
        assert log.stats()["bytes"] <= 50_000
    assert log.stats()["dropped"] > 2000


def test_sealed_batch_survives_the_cap_and_is_stable_until_acked(tmp_path):
    log = PredictionLog(tmp_path / "log", max_records=100)
    log.append([rec(i) for i in range(60)])
    batch = log.seal_batch(40)
    assert [r["seq"] for r in batch.records] == list(range(40))
    log.append([rec(i) for i in range(60, 400)])  # a flood while the batch is in flight
    assert log.stats()["records"] <= 100
    again = log.seal_batch(40)  # a crashed uploader gets the very same batch back
    assert again.batch_id == batch.batch_id and again.records == batch.records
    assert log.ack_batch(batch.batch_id) == 40 and log.ack_batch(batch.batch_id) == 0
    nxt = log.seal_batch(40)
    assert nxt.batch_id != batch.batch_id and nxt.records[0]["seq"] == 340  # oldest unsent left after the cap


def test_the_log_keeps_each_request_as_it_ran_whatever_form_and_later_buffer_reuse(mlp_onnx, tmp_path):
    """Sampled requests are copied on the caller's thread and validated on the worker: a caller that
    refills its input buffer right after run() (a camera loop) must not change what was logged, and
    a bare array and a strided view must log what the model ran on."""
    model = device_runtime.load(mlp_onnx)
    watched = observed(model, directory=tmp_path / "obs", metrics=Metrics(), sample_rate=1.0, inputs="full")
    rng = np.random.default_rng(1)
    frames = [rng.random((1, 16), dtype=np.float32) for _ in range(3)]
    buffer = np.empty((1, 16), np.float32)
    before = time.time()
    for frame in frames:  # one reused buffer, refilled after each call
        buffer[:] = frame
        watched.run({"x": buffer})
    buffer[:] = 0.0
    watched.run(frames[0])  # bare array
    strided = np.repeat(frames[1], 2, axis=1)[:, ::2]
    assert not strided.flags.c_contiguous
    watched.run({"x": strided})
    watched.flush()
    records = watched.log.records("prediction")
    logged = [decode_tensors(r["inputs"])["x"] for r in records]
    for got, want in zip(logged, [*frames, frames[0], frames[1]], strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.float32
    for record, frame in zip(records, [*frames, frames[0], frames[1]], strict=True):
        np.testing.assert_array_equal(decode_tensors(record["outputs"])["y"], model.run({"x": frame})["y"])
    assert all(before - 1 <= r["ts"] <= time.time() + 1 for r in records)  # wall-clock time, not perf_counter's
    assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)
    watched.close()


@pytest.mark.parametrize("policy", ["full", "hashed", "dropped"])
def test_observed_model_logs_sampled_requests_by_input_policy(mlp_onnx, tmp_path, policy):
    model = device_runtime.load(mlp_onnx)
    watched = observed(model, directory=tmp_path / "obs", metrics=Metrics(), sample_rate=1.0, inputs=policy)
    x = np.random.default_rng(0).random((3, 16), dtype=np.float32)
    expected = model.run({"x": x})["y"]
    for _ in range(5):
        watched.run({"x": x})
    watched.flush()
    records = watched.log.records("prediction")
    assert len(records) == 5
    first = records[0]
    assert first["model"] == "mlp" and first["served_by"] == "device:onnxruntime/cpu" and first["batch"] == 3
    np.testing.assert_array_equal(decode_tensors(first["outputs"])["y"], expected)
    if policy == "full":
        np.testing.assert_array_equal(decode_tensors(first["inputs"])["x"], x)
    elif policy == "hashed":
        assert first["inputs"]["x"]["sha256"] == hashlib.sha256(x.tobytes()).hexdigest()
        assert "b64" not in first["inputs"]["x"]
    else:
        assert first["inputs"] is None
    watched.close()


def test_sampling_rate_and_flood_from_threads_keep_the_cap(mlp_onnx, tmp_path):
    watched = observed(device_runtime.load(mlp_onnx), directory=tmp_path / "obs", metrics=Metrics(),
                       sample_rate=0.5, max_records=300, queue_size=10_000)
    x = np.ones((1, 16), np.float32)

    def flood():
        for _ in range(1000):
            watched.run(x)

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    watched.flush()
    stats = watched.log.stats()
    assert stats["records"] <= 300
    assert stats["written"] == watched.sampled and 1700 < watched.sampled + watched.shed < 2300  # ~50 % of 4000
    assert stats["dropped"] == stats["written"] - stats["records"]
    watched.close()


_WRITER = """
import sys, numpy as np
from edgewise import device_runtime as d
w = d.observed(d.load(sys.argv[1]), directory=sys.argv[2], metrics=d.Metrics(), sample_rate=1.0, inputs="full",
               max_records=300, flush_interval_s=0.01, queue_size=100000)
x = np.ones((2, 16), np.float32)
print("ready", flush=True)
while True:
    w.run({"x": x})
"""


@pytest.mark.slow
def test_app_killed_mid_write_leaves_a_consistent_bounded_log(mlp_onnx, tmp_path):
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    for trial in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(mlp_onnx), str(tmp_path / "obs")],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill only once this run has written (and capped) something
            db = sqlite3.connect(tmp_path / "obs" / "predlog.sqlite", timeout=30)
            written = dict(db.execute("SELECT key, value FROM meta").fetchall()).get("written", 0)
            db.close()
            if written > 400 * (trial + 1):
                break
            time.sleep(0.02)
        time.sleep(0.05 * trial)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        db = sqlite3.connect(tmp_path / "obs" / "predlog.sqlite")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
        log = PredictionLog(tmp_path / "obs")  # a restart: caps come from the file
        stats = log.stats()
        assert stats["max_records"] == 300 and 0 < stats["records"] <= 300
        assert stats["written"] == stats["records"] + stats["dropped"]  # every record accounted for
        log.close()
    assert stats["written"] > 300  # the cap was exercised across the restarts


def test_frozen_copies_survive_changes_to_the_callers_arrays_for_every_dtype():
    from edgewise.device_runtime._frozen import frozen as _frozen
    from edgewise.device_runtime._frozen import thawed as _thawed

    strings = np.array([["héllo", "x"]], dtype=object)  # pointers, not data: copied as an array
    text = np.array([["ab", "c"]])
    strided = np.arange(6, dtype=np.int16).reshape(2, 3)[:, ::2]
    frozen = _frozen({"s": strings, "t": text, "i": strided})
    strings[0, 0], text[0, 0], strided[0, 0] = "changed", "zz", 99
    thawed = _thawed(frozen)
    assert thawed["s"].tolist() == [["héllo", "x"]]
    assert thawed["t"].tolist() == [["ab", "c"]] and thawed["t"].dtype == np.dtype("<U2")
    assert thawed["i"].tolist() == [[0, 2], [3, 5]] and thawed["i"].dtype == np.int16
    bare = np.ones((1, 3), np.float32)
    np.testing.assert_array_equal(_thawed(_frozen(bare)), bare)  # a bare array comes back bare
    assert _frozen({"x": [1.0, 2.0]}) is None and _frozen([bare]) is None  # the caller validates those first


def test_string_tensors_are_logged_as_they_were(tmp_path):
    """Object arrays hold pointers, so the sampled copy must copy the array, not its bytes."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["s"], ["t"])], "strings",
                              [helper.make_tensor_value_info("s", TensorProto.STRING, [1])],
                              [helper.make_tensor_value_info("t", TensorProto.STRING, [1])])
    path = tmp_path / "strings.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    watched = observed(device_runtime.load(path), directory=tmp_path / "obs", metrics=Metrics(), sample_rate=1.0,
                       inputs="full")
    words = np.array(["héllo"], dtype=object)
    assert watched.run({"s": words})["t"].tolist() == ["héllo"]
    words[0] = "changed"
    watched.flush()
    (record,) = watched.log.records("prediction")
    assert record["inputs"]["s"]["data"] == ["héllo"] and record["outputs"]["t"]["data"] == ["héllo"]
    watched.close()
