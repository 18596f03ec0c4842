"""The command line: convert, run, inspect, devices; errors as one clear line and an exit code."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgewise.cli import main
from tests.conftest import DIGITS_RECIPE, write_recipe


@pytest.fixture(scope="module")
def converted_dir(digits_recipe_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-dist")
    recipe = write_recipe(digits_recipe_dir, DIGITS_RECIPE.format(variants='["fp32", "int8-dynamic"]',
                                                                  agreement=0.95), "cli.toml")
    assert main(["convert", str(recipe), "--out", str(out), "--quiet"]) == 0
    return out


def test_convert_prints_the_table(converted_dir, capsys):
    assert (converted_dir / "report.md").exists()
    assert (converted_dir / "digits-onnx-int8-dynamic" / "manifest.json").exists()


def test_run_with_npy_input_and_sample(converted_dir, tmp_path, capsys, digits_split):
    np.save(tmp_path / "x.npy", digits_split.test_x[:3])
    bundle = converted_dir / "digits-onnx-int8-dynamic"
    assert main(["run", str(bundle), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "o.npz")]) == 0
    out = capsys.readouterr().out
    assert "placed: onnxruntime on cpu (CPUExecutionProvider)" in out
    assert "output logits: float32[3, 10]" in out and "top-1:" in out
    assert np.load(tmp_path / "o.npz")["logits"].shape == (3, 10)
    assert main(["run", str(bundle), "--sample"]) == 0
    assert "sample check: matches" in capsys.readouterr().out


def test_inspect_bundle_and_file(converted_dir, capsys):
    bundle = converted_dir / "digits-onnx-int8-dynamic"
    assert main(["inspect", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "hashes verified" in out and "int8-dynamic" in out and "pixels  float32[batch, 1, 8, 8]" in out
    assert main(["inspect", str(bundle / "model.onnx"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == "onnx" and data["signature"]["outputs"][0]["name"] == "logits"


def test_devices(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "| onnx | onnxruntime |" in out and "cpu (cpu)" in out


def test_wrong_dtype_is_exit_2_with_a_hint(converted_dir, tmp_path, capsys):
    np.save(tmp_path / "x64.npy", np.zeros((1, 1, 8, 8)))
    code = main(["run", str(converted_dir / "digits-onnx-fp32"), "--input", str(tmp_path / "x64.npy")])
    err = capsys.readouterr().err
    assert code == 2
    assert "input 'pixels' has dtype float64, the model expects float32" in err and "hint:" in err


def test_gate_failure_exit_1(digits_recipe_dir, tmp_path, capsys):
    text = DIGITS_RECIPE.format(variants='["fp32", "int8-dynamic"]', agreement=0.95)
    recipe = write_recipe(digits_recipe_dir, text.replace("[budgets]", "[budgets]\nmax_abs_error_max = 1e-9"),
                          "fail.toml")
    assert main(["convert", str(recipe), "--out", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "accuracy gate failed" in err and "| onnx/int8-dynamic | max_abs_error |" in err


def test_errors_never_print_a_traceback(tmp_path):
    """Corrupt model, tampered bundle, missing recipe file: one message, exit 2, no traceback."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage" * 100)
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2), np.float32))
    (tmp_path / "corrupt-source.toml").write_text(
        '[model]\nname = "m"\ntask = "regression"\nsource = "onnx"\npath = "bad.onnx"\n'
        '[data]\ncalibration = "d.npz"\neval = "d.npz"\n'
    )
    cases = [
        (["convert", str(tmp_path / "corrupt-source.toml")], "bad.onnx failed onnx.checker"),
        (["run", str(bad), "--input", str(tmp_path / "x.npy")], "onnxruntime cannot read bad.onnx"),
        (["convert", str(tmp_path / "missing.toml")], "does not exist"),
        (["inspect", str(tmp_path)], "cannot tell the model format"),
    ]
    for args, message in cases:
        result = subprocess.run([sys.executable, "-m", "edgewise.cli", *args], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr
        assert "Traceback" not in result.stderr
