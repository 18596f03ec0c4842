"""A recipe end to end on a real (small) trained classifier and real digits: bundles, report, gate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgewise import device_runtime
from edgewise.bundle import Bundle
from edgewise.converters import convert, load_recipe
from edgewise.errors import DataError, GateFailedError
from tests.conftest import DIGITS_RECIPE, write_recipe


@pytest.fixture(scope="module")
def converted(digits_recipe_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    text = DIGITS_RECIPE.format(variants='["fp32", "int8-dynamic", "int8-static", "int8-auto"]', agreement=0.95)
    recipe = load_recipe(write_recipe(digits_recipe_dir, text, "full.toml"), output_dir=out)
    return convert(recipe, progress=False), out


def test_every_variant_is_bundled_gated_and_reported(converted):
    report, out = converted
    assert [r.variant for r in report.rows] == ["fp32", "int8-dynamic", "int8-static", "int8-auto"]
    assert report.passed
    for row in report.rows:
        bundle = Bundle.open(row.bundle)  # hashes verified
        m = bundle.manifest
        assert m.name == "digits" and m.version == "1.2.0" and m.format == "onnx"
        assert m.source.kind == "pytorch" and m.source.digest.startswith("sha256:")
        assert m.metrics["gate"]["passed"] is True
        assert m.signature.inputs[0].shape == ("batch", 1, 8, 8)
        assert m.metrics["vs_source"]["samples"] == 360  # the held-out split of 1797 digits
    fp32, dynamic, static, _auto = report.rows
    assert fp32.metrics["max_abs_error"] < 1e-4 and fp32.metrics["top1_agreement"] == 1.0
    static_quant = Bundle.open(static.bundle).manifest.quantization
    assert {"Conv", "Gemm"} <= set(static_quant.details["op_types"])  # convolutions and linear layers in int8
    assert static.size_ratio > 1.3  # a tiny model: scales and graph overhead weigh as much as weights
    assert dynamic.metrics["accuracy"] > 0.85
    assert Bundle.open(static.bundle).manifest.quantization.calibration["method"] == "minmax"
    data = json.loads((out / "report.json").read_text())
    assert data["passed"] is True and len(data["artifacts"]) == 4
    assert "| onnx/int8-static |" in (out / "report.md").read_text()


def test_bundle_sample_reproduces_on_the_device_runtime(converted):
    report, _ = converted
    for row in report.rows:
        model = device_runtime.load(row.bundle)
        inputs, expected = model.bundle.load_sample()
        sample = model.bundle.manifest.sample
        got = model.run(inputs)
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], value, rtol=sample.rtol, atol=sample.atol)


def test_quantized_variants_report_speed_against_float(converted):
    report, _ = converted
    for row in report.rows[1:]:
        assert row.speedup is not None and row.speedup > 0
        if row.speedup < 1.0:
            assert any("SLOWER than fp32" in note for note in row.notes)


def test_gate_failure_raises_with_a_table_after_writing_everything(digits_recipe_dir, tmp_path):
    text = DIGITS_RECIPE.format(variants='["fp32", "int8-dynamic"]', agreement=0.95)
    text = text.replace("[budgets]", "[budgets]\nmax_abs_error_max = 1e-9")  # impossible for int8
    recipe = load_recipe(write_recipe(digits_recipe_dir, text, "strict.toml"), output_dir=tmp_path)
    with pytest.raises(GateFailedError) as info:
        convert(recipe, progress=False)
    assert "| onnx/int8-dynamic | max_abs_error | <= 1e-09 |" in info.value.table
    assert (tmp_path / "report.md").exists()
    manifest = Bundle.open(tmp_path / "digits-onnx-int8-dynamic").manifest
    assert manifest.metrics["gate"]["passed"] is False


def test_npz_data_with_wrong_input_name_is_a_data_error(digits_recipe_dir, tmp_path, digits_split):
    np.savez(digits_recipe_dir / "cal.npz", image=digits_split.train_x[:64])
    np.savez(digits_recipe_dir / "eval.npz", pixels=digits_split.test_x[:64], labels=digits_split.test_y[:64])
    text = DIGITS_RECIPE.format(variants='["fp32"]', agreement=0.9).replace(
        'builtin = "sklearn-digits"', 'calibration = "cal.npz"\neval = "eval.npz"')
    recipe = load_recipe(write_recipe(digits_recipe_dir, text, "npz.toml"), output_dir=tmp_path)
    with pytest.raises(DataError, match=r"cal.npz has no array for input\(s\) \['pixels'\]"):
        convert(recipe, progress=False)


def test_onnx_source_recipe(mlp_onnx, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.normal(size=(128, 16)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=rng.normal(size=(64, 16)).astype(np.float32))
    (tmp_path / "r.toml").write_text(f"""
[model]
name = "mlp"
task = "regression"
source = "onnx"
path = "{mlp_onnx}"
[data]
calibration = "cal.npz"
eval = "eval.npz"
[[targets]]
format = "onnx"
variants = ["fp32", "int8-dynamic"]
[budgets]
cosine_min = 0.95
""")
    report = convert(load_recipe(tmp_path / "r.toml"), progress=False)
    assert report.rows[0].metrics["max_abs_error"] == 0.0  # a copy of its own source
    assert report.rows[1].metrics["cosine_min"] > 0.95
