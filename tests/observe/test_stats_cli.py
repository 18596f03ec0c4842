"""`edgewise stats STORE`: the live figures an observed model left in a device store, read by another process."""

from __future__ import annotations

import json
import time

import numpy as np

from edgewise import device_runtime
from edgewise.cli import main
from edgewise.demo.bundles import make_bundle
from edgewise.device_runtime import Metrics, observed
from edgewise.sync import ModelStore


def test_stats_shows_a_store(tmp_path, capsys):
    store = ModelStore(tmp_path / "store")
    store.install_dir(make_bundle(tmp_path, "digits", "1.0.0", seed=0))
    watched = observed(store.load("digits"), directory=store.observe_dir, metrics=Metrics(), sample_rate=1.0)
    x = np.ones((2, 4), np.float32)
    for _ in range(30):
        watched.run({"x": x})
    watched.record_fallback(served_by="cloud", reason="context_overflow")
    watched.close()  # writes the final snapshot

    assert main(["stats", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "digits: serving 1.0.0" in out
    assert "requests 30, errors 0, served by onnxruntime on cpu" in out
    assert "fallback to cloud (context_overflow): 1" in out
    assert "prediction log: 30 records" in out and "dropped 0" in out

    assert main(["stats", str(store.root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["models"][0]["metrics"]["requests"] == 30 and data["log"]["written"] == 30


def test_stats_of_an_empty_folder_and_a_missing_one(tmp_path, capsys):
    assert main(["stats", str(tmp_path)]) == 0
    assert "no observed model" in capsys.readouterr().out
    assert main(["stats", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_snapshot_is_written_while_running(tmp_path):
    watched = observed(device_runtime.load(make_bundle(tmp_path, "m", "2.0.0", seed=1)), directory=tmp_path / "obs",
                       metrics=Metrics(), sample_rate=0.0, snapshot_interval_s=0.05, flush_interval_s=0.05)
    watched.run({"x": np.ones((1, 4), np.float32)})
    path = tmp_path / "obs" / "stats-m-2.0.0.json"
    deadline = time.monotonic() + 20
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert json.loads(path.read_text())["metrics"]["requests"] == 1  # before close: live
    watched.close()
