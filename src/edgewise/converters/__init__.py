"""Turn trained models into verified device artifacts: export, quantize, gate, bundle, report.

    report = edgewise.converters.convert("recipe.toml")   # what `edgewise convert` runs in CI
    print(report.table())

Engines (torch, onnx, onnxruntime.quantization, optimum) are imported when a step needs them.
"""

from edgewise.converters.gate import Budgets, Miss, check, compare, default_budgets
from edgewise.converters.pipeline import convert, load_torch_module, measure_latency
from edgewise.converters.recipe import Recipe, load_recipe, parse_recipe
from edgewise.converters.report import ArtifactRow, ConversionReport

__all__ = [
    "ArtifactRow",
    "Budgets",
    "ConversionReport",
    "Miss",
    "Recipe",
    "check",
    "compare",
    "convert",
    "default_budgets",
    "load_recipe",
    "load_torch_module",
    "measure_latency",
    "parse_recipe",
]
