"""Which devices take a release: deterministic cohorts, monotonic growth, requirement filters."""

from __future__ import annotations

import pytest

from edgewise.errors import SyncError
from edgewise.sync._release import Release, archive_target_path, release_target_path
from edgewise.sync._rollout import DeviceProfile, cohort, decide, version_key


def release(**changes) -> Release:
    base = dict(model="digits", version="1.1.0", channel="stable", format="onnx",
                archive=archive_target_path("digits", "1.1.0"), archive_length=10, rollout=100.0)
    return Release(**{**base, **changes})


def test_cohorts_are_deterministic_uniform_and_per_model():
    devices = [f"device-{i}" for i in range(4000)]
    positions = [cohort(d, "digits") for d in devices]
    assert positions == [cohort(d, "digits") for d in devices]
    assert all(0 <= p < 100 for p in positions)
    share = sum(p < 10 for p in positions) / len(positions)
    assert 0.08 < share < 0.12  # about 10 % of devices in a 10 % rollout
    assert [cohort(d, "encoder") for d in devices[:50]] != positions[:50]


def test_rollout_growth_only_adds_devices():
    devices = [DeviceProfile(f"d{i}") for i in range(500)]
    chosen = []
    for pct in (1, 10, 50, 100):
        chosen.append({d.device_id for d in devices if decide(release(rollout=pct), d, installed="1.0.0").apply})
    assert chosen[0] <= chosen[1] <= chosen[2] <= chosen[3]
    assert len(chosen[3]) == 500


@pytest.mark.parametrize(
    ("changes", "device", "installed", "reason"),
    [
        ({}, DeviceProfile("a"), "1.1.0", "already installed"),
        ({"version": "1.0.5"}, DeviceProfile("a"), "1.1.0", "older than the installed"),
        ({"min_runtime_version": "9.0.0"}, DeviceProfile("a"), None, "needs edgewise >= 9.0.0"),
        ({"requirements": {"min_ram_bytes": 2 << 30}}, DeviceProfile("a", ram_bytes=1 << 30), None, "RAM"),
        ({"requirements": {"backends": ["coreml"]}}, DeviceProfile("a", backends=("onnxruntime",)), None,
         "backends"),
        ({"shadow": True}, DeviceProfile("a"), None, "shadow release"),
        ({"rollout": 0.0}, DeviceProfile("a"), None, "rollout is at 0 %"),
    ],
)
def test_reasons_for_not_applying(changes, device, installed, reason):
    decision = decide(release(**changes), device, installed=installed)
    assert not decision.apply and reason in decision.reason


def test_bad_versions_are_not_retried():
    decision = decide(release(), DeviceProfile("a"), installed="1.0.0", bad_versions={"1.1.0"})
    assert not decision.apply and "failed its post-install check" in decision.reason


def test_version_order_is_numeric():
    assert version_key("1.10.0") > version_key("1.9.2") > version_key("1.9")


def test_names_that_could_escape_a_path_are_refused():
    with pytest.raises(SyncError, match="not a plain name"):
        release_target_path("stable", "../../etc")
    with pytest.raises(SyncError, match="not a plain name"):
        archive_target_path("m", "1/../../x")


def test_release_record_round_trip_and_validation():
    r = release(rollout=12.5, requirements={"backends": ["onnxruntime"]})
    assert Release.from_json(r.to_json()) == r
    with pytest.raises(SyncError, match="outside 0..100"):
        Release.from_json(release(rollout=150).to_json())
    with pytest.raises(SyncError, match="not valid"):
        Release.from_json(b'{"model": 1}')
