"""Drift: the converter stores a reference distribution; a shifted live stream raises the flag, an unshifted one not."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgewise import device_runtime
from edgewise.bundle import Bundle, Manifest
from edgewise.converters import convert, load_recipe
from edgewise.device_runtime import DriftMonitor, Metrics, build_reference, observed, psi
from edgewise.errors import ManifestError
from tests.conftest import DIGITS_RECIPE, write_recipe


def test_psi_is_zero_for_equal_and_large_for_shifted_distributions():
    assert psi([0.25] * 4, [0.25] * 4) == pytest.approx(0.0)
    assert psi([0.25] * 4, [0.7, 0.1, 0.1, 0.1]) > 0.25
    assert psi([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]) == pytest.approx(0.0)  # empty bins are floored, not inf


def test_monitor_on_synthetic_streams():
    rng = np.random.default_rng(0)
    ref = build_reference([({"x": rng.normal(0, 1, (2000, 8)).astype(np.float32)},
                            {"y": rng.normal(0, 1, (2000, 3)).astype(np.float32)})], "regression")
    names = {f["name"] for f in ref["features"]}
    assert names == {"input:x:mean", "input:x:std", "output:y:mean", "output:y:norm"}
    same = DriftMonitor(ref, "regression", threshold=0.2, min_samples=200)
    moved = DriftMonitor(ref, "regression", threshold=0.2, min_samples=200)
    assert not same.status().flagged and same.status().psi == {}  # no verdict before min_samples
    for _ in range(10):
        same.update({"x": rng.normal(0, 1, (50, 8))}, {"y": rng.normal(0, 1, (50, 3))})
        moved.update({"x": rng.normal(0.8, 1, (50, 8))}, {"y": rng.normal(0, 1, (50, 3))})
    assert not same.status().flagged and max(same.status().psi.values()) < 0.1
    status = moved.status()
    assert status.flagged and status.worst == "input:x:mean" and status.psi["input:x:mean"] > 1.0


def test_manifest_reference_is_optional_and_validated():
    from edgewise.demo.bundles import make_bundle  # noqa: F401 - manifests without a reference still parse

    base = {"schema_version": 1, "edgewise_version": "0", "name": "m", "version": "1", "format": "onnx",
            "task": "generic", "entrypoint": "m.onnx", "files": [{"path": "m.onnx", "sha256": "0" * 64, "size": 1}],
            "signature": {"inputs": [], "outputs": []}, "quantization": {"scheme": "none"},
            "source": {"kind": "onnx", "digest": "sha256:0"}}
    old = Manifest.from_dict(base)
    assert old.reference is None and "reference" not in old.to_dict()
    ref = {"features": [{"name": "input:x:mean", "edges": [0.0], "fractions": [0.5, 0.5]}]}
    assert Manifest.from_dict({**base, "reference": ref}).to_dict()["reference"] == ref
    with pytest.raises(ManifestError, match="edges make 2 bins"):
        Manifest.from_dict({**base, "reference": {"features": [{"name": "a", "edges": [0.0], "fractions": [1.0]}]}})


@pytest.fixture(scope="module")
def digits_bundle(digits_recipe_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    text = DIGITS_RECIPE.format(variants='["fp32"]', agreement=0.95)
    report = convert(load_recipe(write_recipe(digits_recipe_dir, text, "drift.toml"), output_dir=out), progress=False)
    return Bundle.open(report.rows[0].bundle)


def test_converter_stores_the_reference(digits_bundle):
    ref = digits_bundle.manifest.reference
    assert ref is not None and ref["samples"] == 360  # the held-out split the gate used
    features = {f["name"]: f for f in ref["features"]}
    assert set(features) == {"input:pixels:mean", "input:pixels:std", "output:logits:top1", "output:logits:max"}
    assert len(features["output:logits:top1"]["fractions"]) == 10 and features["output:logits:top1"]["categorical"]
    assert sum(features["input:pixels:mean"]["fractions"]) == pytest.approx(1.0)


def _stream(split, shift: float, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    pool = split.test_x
    return [np.clip(pool[rng.integers(0, len(pool), 8)] + shift, 0, 1).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("shift,flagged", [(0.0, False), (0.35, True)])
def test_live_stream_drift_flag(digits_bundle, digits_split, tmp_path, shift, flagged):
    metrics = Metrics()
    watched = observed(device_runtime.load(digits_bundle.root), directory=tmp_path / "obs", metrics=metrics,
                       sample_rate=1.0, drift_threshold=0.25, drift_min_samples=300)
    for batch in _stream(digits_split, shift, 80, seed=1):  # 640 samples
        watched.run({"pixels": batch})
    watched.flush()
    status = watched.drift_status()
    assert status.flagged is flagged, status.psi
    if flagged:
        assert status.psi["input:pixels:mean"] > 0.25
    else:
        assert max(status.psi.values()) < 0.25
    gauges = {s.labels["figure"]: s.value for f in text_string_to_metric_families(metrics.prometheus_text())
              if f.name == "edgewise_observe" for s in f.samples}
    assert gauges["drift_flag"] == (1.0 if flagged else 0.0)
    events = watched.log.records("drift")
    assert len(events) == (1 if flagged else 0)
    if flagged:
        assert events[0]["flagged"] is True and events[0]["worst"]
    watched.close()
