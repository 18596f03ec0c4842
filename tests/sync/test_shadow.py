"""Shadow evaluation and promotion through the real sync client: a staged release runs beside the served one.

A deliberately worse candidate (other weights) is not promoted; a matching one is. Real TUF repository,
real HTTP server, real ONNX models.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgewise import device_runtime
from edgewise.cli import main
from edgewise.demo.bundles import make_bundle
from edgewise.device_runtime import Metrics, PromotionPolicy, decide_promotion, observed
from edgewise.device_runtime._shadow import ShadowRunner
from edgewise.errors import PromotionRefusedError
from edgewise.sync._rollout import DeviceProfile
from edgewise.sync.client import SyncClient
from edgewise.sync.publisher import Publisher
from tests.sync.test_upload import LogServer


@pytest.fixture
def device(repo, server, tmp_path) -> SyncClient:
    client = SyncClient(server.url, tmp_path / "device", DeviceProfile("device-1"),
                        trusted_root=repo.root / "trusted_root.json")
    assert client.update("digits").installed.version == "1.0.0"
    return client


def shadow_run(client: SyncClient, batches: int) -> device_runtime.ObservedModel:
    staged = client.stage("digits", channel="shadow")
    assert staged.updated and staged.installed.version == "1.1.0"
    assert client.store.current("digits").version == "1.0.0"  # staged, not served
    served = observed(client.store.load("digits"), directory=client.store.observe_dir, metrics=Metrics(),
                      sample_rate=0.0)
    served.attach_shadow(device_runtime.load(staged.installed.path), rate=1.0)  # policy: the bundle's gate
    rng = np.random.default_rng(3)
    for _ in range(batches):
        served.run({"x": rng.normal(0, 1, (4, 4)).astype(np.float32)})
    served.flush()
    return served


@pytest.mark.parametrize("matching", [True, False])
def test_promotion_needs_enough_agreeing_shadow_samples(repo, device, tmp_path, capsys, matching, hot_path):
    # matching: the same weights as the served 1.0.0 (seed 0); worse: unrelated weights (seed 1)
    candidate = make_bundle(tmp_path, "digits", "1.1.0", seed=0) if matching else repo.bundles["1.1.0"]
    Publisher(repo.root, repo.keys).publish(candidate, channel="shadow")
    served = shadow_run(device, batches=20)  # 80 samples: too few
    early = served.shadow_decision()
    assert early.action == "wait" and "80 of 200" in early.reason
    with pytest.raises(PromotionRefusedError) as info:
        device.promote("digits", "1.1.0", early)
    assert info.value.action == "wait"
    rng = np.random.default_rng(4)
    for _ in range(40):
        served.run({"x": rng.normal(0, 1, (4, 4)).astype(np.float32)})
    served.flush()
    decision = served.shadow_decision()
    assert decision.metrics["samples"] == 240 and decision.metrics["shed"] == 0
    if matching:
        assert decision.action == "promote" and decision.metrics["cosine_min"] > 0.9999
        installed = device.promote("digits", "1.1.0", decision)
        assert installed.version == "1.1.0" and installed.previous == "1.0.0"
        assert device.store.current("digits").version == "1.1.0"
    else:
        assert decision.action == "reject" and "cosine_min" in decision.reason
        with pytest.raises(PromotionRefusedError, match="reject"):
            device.promote("digits", "1.1.0", decision)
        assert device.store.current("digits").version == "1.0.0"
    # the verdicts went into the prediction log, and the sync client uploads them with it
    actions = [r["action"] for r in served.log.records("shadow")]
    assert actions == ["wait", "promote" if matching else "reject"]
    served.close()
    assert main(["stats", str(device.store.root)]) == 0  # what a support tool sees on the device
    shown = capsys.readouterr().out
    assert f"digits: serving {'1.1.0' if matching else '1.0.0'}" in shown
    assert "shadow 1.1.0: 240 compared, shed 0; " + ("promote" if matching else "reject") in shown
    with LogServer() as collector:
        report = device.upload_log(collector.url)
    kinds = [r["kind"] for r in collector.records]
    assert report.left == 0 and kinds.count("shadow") == 2
    assert kinds.count("promotion") == (1 if matching else 0)


def test_full_shadow_queue_sheds_instead_of_blocking_the_caller():
    release = threading.Event()

    def slow_candidate(feed):
        release.wait(10)
        return {"y": feed["x"]}

    runner = ShadowRunner(slow_candidate, queue_size=2)
    x = {"x": np.ones((1, 3), np.float32)}
    start = time.perf_counter()
    accepted = [runner.offer(x, {"y": x["x"]}) for _ in range(50)]
    offered_in = time.perf_counter() - start
    assert offered_in < 5.0  # 50 offers while the worker is stuck: none waited for it (bounded by 10 s)
    assert accepted.count(True) <= 4 and runner.metrics()["shed"] >= 46
    release.set()
    runner.drain()
    figures = runner.metrics()
    assert figures["samples"] + figures["shed"] == figures["offered"] == 50
    runner.close()


def test_decide_promotion_is_pure_policy():
    policy = PromotionPolicy(min_samples=100, top1_agreement_min=0.98, max_abs_error_max=0.5)
    good = {"samples": 150, "top1_agreement": 0.99, "max_abs_error": 0.1, "cosine_min": 0.9, "errors": 0}
    assert decide_promotion(good, policy).action == "promote"
    assert decide_promotion({**good, "samples": 99}, policy).action == "wait"
    assert decide_promotion({**good, "top1_agreement": 0.9}, policy).action == "reject"
    assert decide_promotion({**good, "max_abs_error": 0.9}, policy).action == "reject"
    assert decide_promotion({**good, "errors": 3}, policy).action == "reject"  # a crashing candidate
    gated = PromotionPolicy.from_manifest({"gate": {"budgets": {"top1_agreement_min": 0.97,
                                                                "accuracy_drop_max_pct": 1.0}}}, "classification")
    assert gated.top1_agreement_min == 0.97 and gated.cosine_min is None
