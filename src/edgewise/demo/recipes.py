"""The two real recipes the demo, the benchmarks and the tests convert: one definition each.

Both write plain ``recipe.toml`` files (plus their text data) into a folder, exactly what a
user would commit next to their model for CI.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# Extra targets of the digits recipe: one recipe, three formats (the demo asks for all of them).
EXTRA_TARGETS = {
    "tflite": '\n[[targets]]\nformat = "tflite"\nvariants = ["fp32", "int8-static", "int8-dynamic"]\n',
    "coreml": '\n[[targets]]\nformat = "coreml"\nvariants = ["fp16", "palettized4"]\n',
}


def write_digits_recipe(folder: Path, weights: Path, *, agreement_min: float = 0.98,
                        formats: Sequence[str] = ("onnx",)) -> Path:
    """Recipe for the MNIST MLP (``edgewise.demo.models.build``) whose state_dict is at ``weights``.

    ``formats`` beyond "onnx" add the TFLite and Core ML targets (``EXTRA_TARGETS``).
    """
    from edgewise.demo import models

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.toml"
    path.write_text(f'''[model]
name = "digits-mlp"
version = "1.0.0"
task = "classification"
source = "pytorch"
path = "{Path(models.__file__).as_posix()}"
factory = "build"
weights = "{weights.resolve().as_posix()}"
input_names = ["pixels"]
output_names = ["logits"]

[data]
builtin = "mnist"
calibration_samples = 512

[[targets]]
format = "onnx"
variants = ["fp32", "int8-dynamic", "int8-static", "int8-auto"]

{"".join(EXTRA_TARGETS[f] for f in formats if f != "onnx")}
[quantization]
per_channel = true
calibration_method = "minmax"

[budgets]
top1_agreement_min = {agreement_min}
accuracy_drop_max_pct = 1.0
''', encoding="utf-8")
    return path


def write_encoder_recipe(folder: Path, model_dir: Path, calibration: Sequence[str], evaluation: Sequence[str]) -> Path:
    """Recipe for a sentence encoder folder, gated by worst-sentence cosine and a 3.5x size floor."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "calibration.txt").write_text("\n".join(calibration) + "\n", encoding="utf-8")
    (folder / "eval.txt").write_text("\n".join(evaluation) + "\n", encoding="utf-8")
    path = folder / "recipe.toml"
    path.write_text(f'''[model]
name = "minilm-l6"
version = "1.0.0"
task = "embedding"
source = "huggingface"
path = "{model_dir.as_posix()}"

[data]
calibration_text = "calibration.txt"
eval_text = "eval.txt"
batch_size = 32

[[targets]]
format = "onnx"
variants = ["fp32", "int8-dynamic", "int8-auto"]

[quantization]
max_float_fraction = 0.05        # of the weights: keeps int8-auto >= 3.5x smaller than fp32

[budgets]
cosine_min = 0.99
size_ratio_min = 3.5
''', encoding="utf-8")
    return path
