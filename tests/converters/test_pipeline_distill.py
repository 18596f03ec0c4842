"""``[distill]`` in a recipe: teacher -> student -> quantized student, gated against the teacher."""

from __future__ import annotations

import pytest

from edgewise.bundle import Bundle
from edgewise.converters import convert, load_recipe
from edgewise.errors import ConversionError, RecipeError

torch = pytest.importorskip("torch")

RECIPE = """
[model]
name = "digits"
task = "classification"
source = "pytorch"
path = "teacher.py"
factory = "build"
weights = "teacher.pt"
input_names = ["pixels"]
output_names = ["logits"]
[data]
builtin = "sklearn-digits"
calibration_samples = 256
[distill]
{distill}
epochs = 25
patience = 5
[[targets]]
format = "onnx"
variants = ["fp32", "int8-dynamic"]
[budgets]
accuracy_drop_max_pct = 5.0
top1_agreement_min = 0.9
"""


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, digits_split):
    from edgewise.demo.models import DigitsMLP, train_classifier

    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    teacher = train_classifier(DigitsMLP(side=8, hidden=256), digits_split.train_x, digits_split.train_y,
                               epochs=10, lr=2e-3, log=lambda _: None)
    torch.save(teacher.state_dict(), folder / "teacher.pt")
    (folder / "teacher.py").write_text("from edgewise.demo.models import DigitsMLP\n\n"
                                       "def build():\n    return DigitsMLP(side=8, hidden=256)\n")
    return folder


@pytest.fixture(scope="module")
def distilled(teacher_dir, tmp_path_factory):
    (teacher_dir / "recipe.toml").write_text(RECIPE.format(distill='student = "preset"\nwidth = 0.25\naugment = 1'))
    recipe = load_recipe(teacher_dir / "recipe.toml", output_dir=tmp_path_factory.mktemp("dist"))
    return convert(recipe, progress=False)


def test_report_shows_teacher_student_and_quantized_student(distilled):
    teacher, student, int8 = distilled.rows
    assert [r.variant for r in distilled.rows] == ["teacher-fp32", "fp32", "int8-dynamic"]
    assert teacher.metrics["max_abs_error"] < 1e-4  # the teacher's own export: parity
    assert teacher.params / student.params >= 5
    assert student.size_ratio > 4 and int8.size_ratio > student.size_ratio  # both relative to the teacher
    assert student.metrics["accuracy_drop_pct"] <= 5.0 and student.metrics["top1_agreement"] >= 0.9
    assert distilled.passed
    assert "| onnx/teacher-fp32 |" in distilled.table() and "params" in distilled.table()


def test_student_bundles_say_where_they_came_from(distilled):
    teacher, student, _ = distilled.rows
    assert Bundle.open(teacher.bundle).manifest.name == "digits-teacher"
    manifest = Bundle.open(student.bundle).manifest
    assert manifest.name == "digits" and manifest.extra["distilled_from"] == "teacher.py"
    assert manifest.metrics["gate"]["budgets"]["accuracy_drop_max_pct"] == 5.0


def test_incompatible_student_fails_before_training(teacher_dir, tmp_path):
    five_classes = "torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))"
    (teacher_dir / "student.py").write_text(f"import torch\n\ndef build():\n    return {five_classes}\n")
    (teacher_dir / "bad.toml").write_text(RECIPE.format(distill='student = "student.py:build"'))
    with pytest.raises(ConversionError, match="10"):
        convert(load_recipe(teacher_dir / "bad.toml", output_dir=tmp_path), progress=False)


def test_distill_needs_a_pytorch_teacher(tmp_path, mlp_onnx):
    (tmp_path / "r.toml").write_text(f"""
[model]
name = "m"
task = "regression"
source = "onnx"
path = "{mlp_onnx}"
[data]
builtin = "sklearn-digits"
[distill]
epochs = 1
""")
    with pytest.raises(RecipeError, match="needs a PyTorch teacher"):
        load_recipe(tmp_path / "r.toml")


def test_shifted_copies_grow_image_transfer_data(digits_split):
    import numpy as np

    from edgewise.converters._data import shifted_copies
    from edgewise.errors import DataError

    x = digits_split.train_x[:10]
    grown = shifted_copies(x, 2, seed=0)
    assert grown.shape == (30, 1, 8, 8)
    np.testing.assert_array_equal(grown[:10], x)
    assert np.array_equal(grown, shifted_copies(x, 2, seed=0))  # deterministic
    with pytest.raises(DataError, match="images"):
        shifted_copies(x.reshape(10, -1), 1)


@pytest.mark.parametrize(("line", "message"), [
    ("tempreature = 2.0", "unknown key"), ("batch_size = 0", "distill.batch_size"), ("alpha = -1", "positive number"),
])
def test_distill_settings_are_validated(teacher_dir, line, message):
    (teacher_dir / "v.toml").write_text(RECIPE.format(distill=line))
    with pytest.raises(RecipeError, match=message):
        load_recipe(teacher_dir / "v.toml")


def test_training_settings_reach_the_trainer_unchanged(teacher_dir):
    (teacher_dir / "t.toml").write_text(RECIPE.format(distill="temperature = 2.0\nseed = 3"))
    spec = load_recipe(teacher_dir / "t.toml").distill
    assert spec.training == {"temperature": 2.0, "epochs": 25, "patience": 5, "seed": 3}
