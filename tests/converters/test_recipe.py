"""Recipe validation happens before any slow work and names the wrong key or file."""

from __future__ import annotations

import pytest

from edgewise.converters import load_recipe
from edgewise.errors import RecipeError
from tests.conftest import DIGITS_RECIPE, write_recipe


def recipe_text(variants='["fp32", "int8-dynamic"]', agreement=0.98):
    return DIGITS_RECIPE.format(variants=variants, agreement=agreement)


def test_valid_recipe_resolves_paths_and_budgets(digits_recipe_dir):
    recipe = load_recipe(write_recipe(digits_recipe_dir, recipe_text()))
    assert recipe.model.path == (digits_recipe_dir / "model.py").resolve()
    assert recipe.targets[0].variants == ("fp32", "int8-dynamic")
    assert recipe.budgets_for("int8-dynamic").top1_agreement_min == 0.98
    assert recipe.budgets_for("fp32").cosine_min == 0.9999  # parity default for float exports
    assert recipe.output_dir == digits_recipe_dir / "dist"


def test_float_variant_is_added_when_only_quantized_asked(digits_recipe_dir):
    recipe = load_recipe(write_recipe(digits_recipe_dir, recipe_text('["int8-static"]')))
    assert recipe.targets[0].variants == ("fp32", "int8-static")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('weights = "weights.pt"', 'weights = "gone.pt"'), "model.weights: gone.pt not found"),
        (lambda t: t.replace('path = "model.py"', 'path = "nope.py"'), "model.path: nope.py not found"),
        (lambda t: t.replace('"int8-dynamic"', '"int4-magic"'), "unknown onnx variant 'int4-magic'"),
        (lambda t: t.replace('format = "onnx"', 'format = "safetensors"'), "'safetensors' has no converter"),
        (lambda t: t.replace('task = "classification"', 'task = "poetry"'), "model.task"),
        (lambda t: t.replace("[budgets]", "[budgets]\ncosine_minimum = 0.9"), "unknown budget"),
        (lambda t: t.replace('builtin = "sklearn-digits"', 'builtin = "imagenet"'), "data.builtin"),
        (lambda t: t.replace('factory = "build"\n', ""), "model.factory is required"),
        (lambda t: t + "\n[extra]\nx = 1\n", "unknown key"),
        (lambda t: t.replace("[data]", "[data]\nbatch_size = 0"), "data.batch_size must be an integer >= 1"),
        (lambda t: t.replace("name = ", "name = = "), "not valid TOML"),
    ],
)
def test_bad_recipes_name_the_problem(digits_recipe_dir, edit, message):
    path = write_recipe(digits_recipe_dir, edit(recipe_text()), name="bad.toml")
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "recipe.toml")
