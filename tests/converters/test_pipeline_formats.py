"""One recipe, three formats: ONNX, TFLite and Core ML bundles from one PyTorch source in one run."""

from __future__ import annotations

import json
import platform

import numpy as np
import pytest

pytest.importorskip("litert_torch")
pytest.importorskip("coremltools")

from edgewise import device_runtime
from edgewise.bundle import Bundle
from edgewise.converters import convert, load_recipe
from edgewise.errors import ConversionError, RecipeError
from tests.conftest import DIGITS_RECIPE, write_recipe

THREE_FORMATS = DIGITS_RECIPE.format(variants='["fp32", "int8-static"]', agreement=0.95) + """
[[targets]]
format = "tflite"
variants = ["fp32", "int8-static", "int8-dynamic", "int8-weight-only"]

[[targets]]
format = "coreml"
variants = ["fp32", "fp16", "int8-weight-only", "palettized4"]
"""
# The [budgets] table of DIGITS_RECIPE precedes the extra [[targets]]: TOML keeps them apart.
THREE_FORMATS = THREE_FORMATS.replace("[budgets]", "[output]\nlatency_batch = 8\n\n[budgets]")


@pytest.fixture(scope="module")
def converted(digits_recipe_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist3")
    recipe = load_recipe(write_recipe(digits_recipe_dir, THREE_FORMATS, "three.toml"), output_dir=out)
    return convert(recipe, progress=False), out


@pytest.mark.slow
def test_one_recipe_yields_onnx_tflite_and_coreml_bundles(converted):
    report, out = converted
    assert [r.artifact for r in report.rows] == [
        "onnx/fp32", "onnx/int8-static", "tflite/fp32", "tflite/int8-static", "tflite/int8-dynamic",
        "tflite/int8-weight-only", "coreml/fp32", "coreml/fp16", "coreml/int8-weight-only", "coreml/palettized4"]
    assert report.passed, report.markdown()
    formats = {Bundle.open(r.bundle).manifest.format for r in report.rows}  # every file hash verified
    assert formats == {"onnx", "tflite", "coreml"}
    data = json.loads((out / "report.json").read_text())
    assert len(data["artifacts"]) == 10
    md = (out / "report.md").read_text()
    assert "| tflite/int8-static |" in md and "| coreml/palettized4 |" in md


@pytest.mark.slow
def test_tflite_bundles_are_gated_through_the_litert_backend(converted):
    report, _ = converted
    rows = {r.artifact: r for r in report.rows}
    for name in ("tflite/fp32", "tflite/int8-static", "tflite/int8-dynamic", "tflite/int8-weight-only"):
        row = rows[name]
        m = Bundle.open(row.bundle).manifest
        assert m.entrypoint == "model.tflite" and m.requirements.backends == ("litert",)
        assert m.metrics["gate"]["passed"] is True and m.metrics["vs_source"]["samples"] == 360
        assert m.signature.inputs[0].name == "pixels" and m.signature.outputs[0].name == "logits"
        model = device_runtime.load(row.bundle)
        inputs, expected = model.bundle.load_sample()
        np.testing.assert_allclose(model.run(inputs)["logits"], expected["logits"], rtol=m.sample.rtol,
                                   atol=m.sample.atol)
    assert rows["tflite/fp32"].metrics["max_abs_error"] < 1e-4
    static = Bundle.open(rows["tflite/int8-static"].bundle).manifest.quantization
    assert static.activation_dtype == "int8" and static.details["io_dtype"] == "int8"
    assert rows["tflite/int8-static"].metrics["top1_agreement"] >= 0.95
    for name in ("tflite/int8-static", "tflite/int8-dynamic", "tflite/int8-weight-only"):
        assert rows[name].speedup is not None and rows[name].size_ratio > 1.5
        slower = any(n.startswith("SLOWER") for n in rows[name].notes)
        assert slower == (rows[name].speedup < 1.0)  # a variant slower than float is never silent


@pytest.mark.slow
@pytest.mark.skipif(platform.system() == "Darwin", reason="on macOS the Core ML bundles are gated by running them")
def test_coreml_bundles_record_what_was_checked_and_what_was_not(converted):
    report, _ = converted
    rows = {r.artifact: r for r in report.rows if r.format == "coreml"}
    sizes = {}
    for name, row in rows.items():
        bundle = Bundle.open(row.bundle)
        m = bundle.manifest
        assert row.not_run and "macOS" in row.not_run
        assert m.entrypoint == "model.mlpackage" and any(f.path.startswith("model.mlpackage/") for f in m.files)
        assert m.metrics["gate"]["passed"] is None and "macOS" in m.metrics["gate"]["not_run"]
        checked = m.metrics["checked"]
        assert checked["names_match_recipe"] and checked["inputs"][0]["name"] == "pixels"
        assert any("accuracy" in item for item in m.metrics["not_checked"])
        assert m.extra["sample_expected_from"].startswith("source model")
        sizes[name] = checked["size_bytes"]
    assert Bundle.open(rows["coreml/palettized4"].bundle).manifest.metrics["checked"]["deployment_target"] == "iOS16"
    assert "constexpr_lut_to_dense" in Bundle.open(rows["coreml/palettized4"].bundle).manifest.metrics[
        "checked"]["weight_ops"]
    assert sizes["coreml/fp16"] < sizes["coreml/fp32"]
    assert sizes["coreml/palettized4"] < sizes["coreml/int8-weight-only"] < sizes["coreml/fp32"]


DET_MODEL = '''
import torch


class Det(torch.nn.Module):
    """Linear layer, then a 4x4 determinant: ONNX has Det; TFLite and Core ML lower no such operator."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 16)

    def forward(self, pixels):
        z = self.linear(pixels.reshape(pixels.shape[0], 64)).reshape(-1, 4, 4)
        return torch.cat([z.reshape(-1, 16)[:, :9], torch.linalg.det(z)[:, None]], 1)


def build():
    torch.manual_seed(0)
    return Det()
'''


@pytest.mark.slow
def test_an_operator_a_target_cannot_lower_fails_that_target_only(digits_recipe_dir, tmp_path):
    (tmp_path / "det.py").write_text(DET_MODEL, encoding="utf-8")
    text = (DIGITS_RECIPE.format(variants='["fp32"]', agreement=0.9)
            .replace('path = "model.py"', f'path = "{(tmp_path / "det.py").as_posix()}"')
            .replace('weights = "weights.pt"\n', "")
            + '\n[[targets]]\nformat = "tflite"\nvariants = ["fp32", "int8-dynamic"]\n'
            + '\n[[targets]]\nformat = "coreml"\nvariants = ["fp32"]\n')
    recipe = load_recipe(write_recipe(digits_recipe_dir, text, "det.toml"), output_dir=tmp_path / "dist")
    with pytest.raises(ConversionError, match=r"_linalg_det") as info:
        convert(recipe, progress=False)
    assert "tflite" in str(info.value)
    report = json.loads((tmp_path / "dist" / "report.json").read_text())
    rows = {a["artifact"]: a for a in report["artifacts"]}
    assert rows["onnx/fp32"]["passed"] and Bundle.open(rows["onnx/fp32"]["bundle"]).manifest.format == "onnx"
    assert "cannot lower operator aten._linalg_det" in rows["tflite/fp32"]["error"]
    assert "tflite" in rows["tflite/fp32"]["error"]
    assert "float tflite export failed" in rows["tflite/int8-dynamic"]["error"]
    assert "linalg_det" in rows["coreml/fp32"]["error"] and "coreml" in rows["coreml/fp32"]["error"]
    assert "NOT BUILT" in (tmp_path / "dist" / "report.md").read_text()


def test_coreml_deployment_target_is_validated_before_any_work(digits_recipe_dir):
    base = DIGITS_RECIPE.format(variants='["fp32"]', agreement=0.9)
    too_old = base + '\n[[targets]]\nformat = "coreml"\nvariants = ["palettized4"]\ndeployment_target = "iOS15"\n'
    with pytest.raises(RecipeError, match="needs deployment_target iOS16"):
        load_recipe(write_recipe(digits_recipe_dir, too_old, "old.toml"))
    wrong = base.replace('format = "onnx"', 'format = "onnx"\ndeployment_target = "iOS17"')
    with pytest.raises(RecipeError, match="coreml' only"):
        load_recipe(write_recipe(digits_recipe_dir, wrong, "wrong.toml"))
    ok = base + '\n[[targets]]\nformat = "coreml"\nvariants = ["fp16"]\ndeployment_target = "iOS17"\n'
    assert load_recipe(write_recipe(digits_recipe_dir, ok, "ok.toml")).targets[1].deployment_target == "iOS17"
    with pytest.raises(RecipeError, match="unknown tflite variant"):
        load_recipe(write_recipe(digits_recipe_dir, base + '\n[[targets]]\nformat = "tflite"\nvariants = ["int3"]\n',
                                 "t.toml"))
