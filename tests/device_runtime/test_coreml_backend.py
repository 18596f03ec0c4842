"""The Core ML backend: inspect anywhere, predict only on macOS (skipped elsewhere, never faked)."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from edgewise import device_runtime  # noqa: E402
from edgewise.errors import ArtifactError, BackendUnavailableError  # noqa: E402

MACOS = platform.system() == "Darwin"
needs_macos = pytest.mark.skipif(not MACOS, reason="Core ML predicts only on macOS (Apple's Core ML framework)")


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(4)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()


@pytest.fixture(scope="module")
def mlpackage(tmp_path_factory, mlp) -> Path:
    from edgewise.converters._coreml import export

    dest = tmp_path_factory.mktemp("coreml") / "mlp.mlpackage"
    return export(mlp, {"x": np.zeros((1, 16), np.float32)}, ["x"], ["y"], dest, variant="fp16", target="iOS15")


def test_inspect_reads_the_spec_on_any_platform(mlpackage):
    info = device_runtime.inspect_file(mlpackage)
    assert info["format"] == "coreml" and info["model_type"] == "mlProgram"
    assert [s.name for s in info["signature"].inputs] == ["x"]
    assert info["signature"].inputs[0].shape == ("batch", 16)  # flexible batch (RangeDim)
    assert [s.name for s in info["signature"].outputs] == ["y"]


@pytest.mark.skipif(MACOS, reason="on macOS Core ML loads")
def test_load_off_macos_names_the_platform_need(mlpackage):
    with pytest.raises(BackendUnavailableError, match="only on macOS") as info:
        device_runtime.load(mlpackage)
    assert platform.system() in str(info.value)
    report = {b.format: b for b in device_runtime.probe().backends}
    assert not report["coreml"].installed and "macOS" in report["coreml"].problem


@needs_macos
@pytest.mark.parametrize(("device", "unit"), [("auto", "CPU_AND_NE"), ("gpu", "CPU_AND_GPU"), ("cpu", "CPU_ONLY")])
def test_predict_on_macos_matches_torch(mlpackage, mlp, device, unit):
    model = device_runtime.load(mlpackage, device=device)
    assert model.accelerator == unit
    x = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    np.testing.assert_allclose(model.run({"x": x})["y"], mlp(torch.from_numpy(x)).detach().numpy(), atol=2e-2)


@pytest.mark.parametrize("damage", ["random-manifest", "truncated-model", "no-manifest", "random-file"])
def test_corrupt_mlpackage_is_an_artifact_error(tmp_path, mlpackage, damage):
    bad = tmp_path / "bad.mlpackage"
    if damage == "random-file":
        bad.write_bytes(os.urandom(2048))
        with pytest.raises(ArtifactError, match=r"bad\.mlpackage"):
            device_runtime.inspect_file(bad)
        return
    shutil.copytree(mlpackage, bad)
    if damage == "random-manifest":
        (bad / "Manifest.json").write_bytes(os.urandom(300))
    elif damage == "no-manifest":
        (bad / "Manifest.json").unlink()
    else:
        spec = next(bad.rglob("model.mlmodel"))
        spec.write_bytes(spec.read_bytes()[:57])
    with pytest.raises(ArtifactError, match=r"bad\.mlpackage"):
        device_runtime.inspect_file(bad)


def test_cli_inspect_reads_a_package_and_run_names_the_platform(mlpackage, capsys):
    import json

    from edgewise.cli import main

    assert main(["inspect", str(mlpackage), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "coreml" and info["signature"]["inputs"][0]["name"] == "x"
    assert "const" in json.dumps(info["weight_ops"])
    if not MACOS:
        np.save(mlpackage.parent / "x.npy", np.zeros((1, 16), np.float32))
        assert main(["run", str(mlpackage), "--input", str(mlpackage.parent / "x.npy")]) == 2
        assert "only on macOS" in capsys.readouterr().err
