"""``recipe.toml``: what CI converts, with which data, into which variants, under which budgets.

Parsed and fully validated before any slow work starts: a typo or a missing file fails in
milliseconds with the key that is wrong, not after a 10-minute export. Paths are relative
to the recipe file. Example::

    [model]
    name = "digits-mlp"
    version = "1.0.0"
    task = "classification"          # classification | embedding | regression
    source = "pytorch"               # pytorch | onnx | huggingface
    path = "model.py"                # pytorch: a .py file with `factory`, or a TorchScript .pt
    factory = "build"                # function returning the nn.Module (weights loaded inside or below)
    weights = "weights.pt"           # optional state_dict
    input_names = ["pixels"]
    output_names = ["logits"]

    [data]
    builtin = "sklearn-digits"       # or: calibration = "calib.npz", eval = "eval.npz" (keys = input names,
                                     # optional "labels"); text encoders: calibration_text / eval_text files

    [[targets]]
    format = "onnx"
    variants = ["fp32", "int8-dynamic", "int8-static", "int8-auto"]

    [quantization]
    per_channel = true
    calibration_method = "minmax"    # minmax | entropy | percentile

    [budgets]                        # quantized variants, against the source model on the eval data
    top1_agreement_min = 0.98
    accuracy_drop_max_pct = 1.0
    [budgets.float]                  # float variants (parity)
    cosine_min = 0.9999

    [output]
    dir = "dist"
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from edgewise.converters.gate import Budgets, default_budgets
from edgewise.errors import RecipeError

SOURCES = ("pytorch", "onnx", "huggingface")
TASKS = ("classification", "embedding", "regression", "text-generation")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
BUILTIN_DATA = ("sklearn-digits", "mnist")
# format -> variants it knows. Float variants are parity exports; the others are quantized.
VARIANTS: dict[str, tuple[str, ...]] = {
    "onnx": ("fp32", "int8-dynamic", "int8-static", "int8-auto"),
    # GGUF (language models): float files written by edgewise, quantized ones by llama.cpp's quantizer.
    "gguf": ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q3_k_m", "q2_k",
             "q5_0", "q5_1", "q4_0", "q4_1"),
    # litert-torch float; PT2E full INT8 (int8 I/O); ai-edge-quantizer dynamic-range / weight-only INT8.
    "tflite": ("fp32", "int8-static", "int8-dynamic", "int8-weight-only"),
    # coremltools ML program: float32 / float16 compute; int8 linear weights; 4-bit k-means palettization.
    "coreml": ("fp32", "fp16", "int8-weight-only", "palettized4"),
}
FLOAT_VARIANTS = ("fp32", "fp16", "f32", "f16", "bf16")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    task: str
    source: str
    path: Path
    factory: str | None = None
    weights: Path | None = None
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    hf_task: str = "feature-extraction"
    gate_output: str | None = None  # which output the gate compares (default: the last/only one)


@dataclass(frozen=True)
class DataSpec:
    builtin: str | None = None
    calibration: Path | None = None
    eval: Path | None = None
    calibration_text: Path | None = None
    eval_text: Path | None = None
    batch_size: int = 32
    max_length: int = 128
    calibration_samples: int = 256
    eval_samples: int | None = None


@dataclass(frozen=True)
class QuantSpec:
    per_channel: bool = True
    calibration_method: str = "minmax"
    max_float_fraction: float = 0.25


@dataclass(frozen=True)
class DistillSpec:
    """``[distill]``: train a smaller student from the source model (the teacher) before exporting.

    Every artifact is then the student's, gated against the *teacher* on the evaluation data, so
    the report says what distillation and quantization cost together.
    """

    student: str = "preset"  # "preset", or "file.py:function" returning the student nn.Module
    width: float = 0.25
    depth: float = 0.5
    # Overrides of edgewise.converters.distill.DistillConfig (temperature, alpha, lr, epochs, batch_size,
    # patience, seed): its defaults are the only ones, so recipe and API cannot drift apart.
    training: dict[str, Any] = field(default_factory=dict)
    use_labels: bool = True
    augment: int = 0  # randomly shifted copies of image transfer data (the teacher labels them)
    transfer: Path | None = None  # .npz (input names, optional labels); default: the built-in train split
    transfer_text: Path | None = None  # text encoders: one sentence a line (unlabeled)
    student_path: Path | None = None
    student_factory: str | None = None


@dataclass(frozen=True)
class GgufSpec:
    """``[gguf]``: how language models are converted and gated (perplexity / KL divergence)."""

    eval_ctx: int = 256  # tokens per evaluation chunk (the second half of each is scored)
    eval_chunks: int = 4
    pre_tokenizer: str | None = None  # llama.cpp pre-tokenizer name when it cannot be detected
    parity_prompt: str = "The capital of France is Paris. The capital of Italy is"
    speed_tokens: int = 64  # tokens generated to measure tokens/s
    threads: int | None = None


@dataclass(frozen=True)
class Target:
    format: str
    variants: tuple[str, ...]
    deployment_target: str | None = None  # coreml only: "iOS16", "macOS14", ... (default: what a variant needs)


@dataclass(frozen=True)
class Recipe:
    path: Path
    model: ModelSpec
    data: DataSpec
    targets: tuple[Target, ...]
    quantization: QuantSpec = field(default_factory=QuantSpec)
    budgets_quantized: Budgets = field(default_factory=Budgets)
    budgets_float: Budgets = field(default_factory=Budgets)
    budgets_by_variant: dict[str, Budgets] = field(default_factory=dict)
    output_dir: Path = Path("dist")
    latency_batch: int = 32
    distill: DistillSpec | None = None
    gguf: GgufSpec = field(default_factory=GgufSpec)

    def budgets_for(self, variant: str) -> Budgets:
        # A distilled student is lossy even in float: it is gated like a quantized model (against the teacher).
        quantized = variant not in FLOAT_VARIANTS or self.distill is not None
        base = default_budgets(self.model.task, quantized)
        base = base.merged(self.budgets_quantized if quantized else self.budgets_float)
        return base.merged(self.budgets_by_variant.get(variant, Budgets()))


def load_recipe(path: str | Path, *, output_dir: str | Path | None = None) -> Recipe:
    """Read and validate a recipe; RecipeError names the key or file that is wrong."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path} is not valid TOML: {exc}") from exc
    return parse_recipe(raw, base_dir=path.parent, recipe_path=path, output_dir=output_dir)


def parse_recipe(raw: Mapping[str, Any], *, base_dir: Path, recipe_path: Path | None = None,
                 output_dir: str | Path | None = None) -> Recipe:
    _known(raw, {"model", "data", "targets", "quantization", "budgets", "output", "distill", "gguf"}, "recipe")
    model = _model(_table(raw, "model", required=True), base_dir)
    data = _data(_table(raw, "data", required=True), base_dir, model)
    targets = _targets(raw.get("targets"))
    if any(t.format == "gguf" for t in targets) != (model.task == "text-generation"):
        raise RecipeError("format = 'gguf' is for language models (model.task = 'text-generation'), and they "
                          "convert to GGUF only", hint="Use onnx / tflite / coreml targets for tensor models.")
    quant = _quant(_table(raw, "quantization"))
    budgets_raw = dict(_table(raw, "budgets"))
    float_raw = budgets_raw.pop("float", {})
    by_variant = {key: Budgets.from_dict(budgets_raw.pop(key), f"budgets.{key}")
                  for key in list(budgets_raw) if isinstance(budgets_raw[key], dict)}
    output = _table(raw, "output")
    _known(output, {"dir", "latency_batch"}, "output")
    out_dir = Path(output_dir) if output_dir is not None else base_dir / output.get("dir", "dist")
    return Recipe(
        path=recipe_path or base_dir / "recipe.toml",
        model=model, data=data, targets=targets, quantization=quant,
        budgets_quantized=Budgets.from_dict(budgets_raw, "budgets"),
        budgets_float=Budgets.from_dict(float_raw, "budgets.float"),
        budgets_by_variant=by_variant,
        output_dir=out_dir,
        latency_batch=_int(output.get("latency_batch", 32), "output.latency_batch", minimum=1),
        distill=_distill(raw.get("distill"), base_dir, model),
        gguf=_gguf(_table(raw, "gguf")),
    )


def _gguf(table: Mapping[str, Any]) -> GgufSpec:
    _known(table, set(GgufSpec.__dataclass_fields__), "gguf")
    values: dict[str, Any] = {}
    for key, minimum in (("eval_ctx", 16), ("eval_chunks", 1), ("speed_tokens", 1), ("threads", 1)):
        if key in table:
            values[key] = _int(table[key], f"gguf.{key}", minimum=minimum)
    for key in ("pre_tokenizer", "parity_prompt"):
        if key in table:
            values[key] = _str(table, key, "gguf")
    return GgufSpec(**values)


def _distill(table: Any, base: Path, model: ModelSpec) -> DistillSpec | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        raise RecipeError("recipe key 'distill' must be a table")
    fields_ = {f for f in DistillSpec.__dataclass_fields__ if f not in ("student_path", "student_factory", "training")}
    _known(table, fields_ | set(_TRAINING_FLOATS) | set(_TRAINING_INTS), "distill")
    if model.source not in ("pytorch", "huggingface"):
        raise RecipeError("[distill] needs a PyTorch teacher (model.source = 'pytorch' or 'huggingface')")
    if model.source == "huggingface" and "transfer_text" not in table:
        raise RecipeError("[distill] of a Hugging Face encoder needs distill.transfer_text (one sentence a line)")
    values: dict[str, Any] = {}
    training: dict[str, Any] = {}
    for key in ("width", "depth", *_TRAINING_FLOATS):
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise RecipeError(f"distill.{key} must be a positive number, not {value!r}")
            (training if key in _TRAINING_FLOATS else values)[key] = float(value)
    for key, minimum in _TRAINING_INTS.items():
        if key in table:
            training[key] = _int(table[key], f"distill.{key}", minimum=minimum)
    if "augment" in table:
        values["augment"] = _int(table["augment"], "distill.augment", minimum=0)
    if "use_labels" in table:
        if not isinstance(table["use_labels"], bool):
            raise RecipeError("distill.use_labels must be true or false")
        values["use_labels"] = table["use_labels"]
    if "transfer" in table:
        values["transfer"] = _existing(base, table["transfer"], "distill.transfer")
    if "transfer_text" in table:
        values["transfer_text"] = _existing(base, table["transfer_text"], "distill.transfer_text")
    student = table.get("student", "preset")
    if not isinstance(student, str) or not student:
        raise RecipeError("distill.student must be \"preset\" or \"file.py:function\"")
    if student != "preset":
        file, _, factory = student.rpartition(":")
        if not file or not factory:
            raise RecipeError(f"distill.student {student!r} must look like \"student.py:build\"")
        values["student_path"] = _existing(base, file, "distill.student")
        values["student_factory"] = factory
    return DistillSpec(student=student, training=training, **values)


_TRAINING_FLOATS = ("temperature", "alpha", "lr")
_TRAINING_INTS = {"epochs": 1, "batch_size": 1, "patience": 1, "seed": 0}


def _model(table: Mapping[str, Any], base: Path) -> ModelSpec:
    _known(table, {"name", "version", "task", "source", "path", "factory", "weights", "input_names",
                   "output_names", "hf_task", "gate_output"}, "model")
    name = _str(table, "name", "model", required=True)
    task = _choice(table.get("task", "classification"), TASKS, "model.task")
    source = _choice(table.get("source"), SOURCES, "model.source")
    src_path = _existing(base, _str(table, "path", "model", required=True), "model.path")
    factory = _str(table, "factory", "model")
    weights = table.get("weights")
    if source == "pytorch" and src_path.suffix == ".py" and not factory:
        raise RecipeError("model.factory is required when model.path is a Python file",
                          hint='Name the function that returns the nn.Module: factory = "build".')
    if task == "text-generation" and source != "huggingface":
        raise RecipeError("task = 'text-generation' converts a Hugging Face checkpoint folder: source = 'huggingface'")
    if source == "huggingface" and not src_path.is_dir():
        raise RecipeError(f"model.path {src_path} must be a Hugging Face model folder for source = 'huggingface'")
    input_names = _names(table.get("input_names", ["input"] if source == "pytorch" else []), "model.input_names")
    output_names = _names(table.get("output_names", ["output"] if source == "pytorch" else []), "model.output_names")
    return ModelSpec(
        name=name,
        version=str(table.get("version", "0.1.0")),
        task=task,
        source=source,
        path=src_path,
        factory=factory,
        weights=_existing(base, weights, "model.weights") if weights else None,
        input_names=input_names,
        output_names=output_names,
        hf_task=str(table.get("hf_task", "feature-extraction")),
        gate_output=_str(table, "gate_output", "model"),
    )


def _data(table: Mapping[str, Any], base: Path, model: ModelSpec) -> DataSpec:
    _known(table, {"builtin", "calibration", "eval", "calibration_text", "eval_text", "batch_size",
                   "max_length", "calibration_samples", "eval_samples"}, "data")
    builtin = table.get("builtin")
    if builtin is not None:
        _choice(builtin, BUILTIN_DATA, "data.builtin")
    files = {key: _existing(base, table[key], f"data.{key}") if table.get(key) else None
             for key in ("calibration", "eval", "calibration_text", "eval_text")}
    if model.task == "text-generation":  # gated on text (perplexity, KLD): no tensors to calibrate with
        return DataSpec(eval_text=files["eval_text"])
    is_text = model.source == "huggingface"
    has_text = files["calibration_text"] and files["eval_text"]
    if is_text and not has_text and not (files["calibration"] and files["eval"]):
        raise RecipeError("a Hugging Face source needs data.calibration_text and data.eval_text (one sentence a line)")
    if not is_text and not builtin and not (files["calibration"] and files["eval"]):
        raise RecipeError("data needs either builtin = '...' or both calibration = and eval = (.npz files)",
                          hint=f"Built-in real data sets: {', '.join(BUILTIN_DATA)}.")
    eval_samples = table.get("eval_samples")
    return DataSpec(
        builtin=builtin, **files,
        batch_size=_int(table.get("batch_size", 32), "data.batch_size", minimum=1),
        max_length=_int(table.get("max_length", 128), "data.max_length", minimum=2),
        calibration_samples=_int(table.get("calibration_samples", 256), "data.calibration_samples", minimum=1),
        eval_samples=_int(eval_samples, "data.eval_samples", minimum=1) if eval_samples is not None else None,
    )


def _targets(raw: Any) -> tuple[Target, ...]:
    if not raw:
        return (Target("onnx", ("fp32", "int8-dynamic")),)
    if not isinstance(raw, list):
        raise RecipeError("targets must be an array of tables: [[targets]]")
    targets = []
    for i, table in enumerate(raw):
        where = f"targets[{i}]"
        _known(table, {"format", "variants", "deployment_target"}, where)
        fmt = table.get("format")
        if fmt not in VARIANTS:
            raise RecipeError(f"{where}.format: {fmt!r} has no converter in this edgewise version; "
                              f"available: {', '.join(VARIANTS)}")
        variants = _names(table.get("variants", list(VARIANTS[fmt][:2])), f"{where}.variants")
        for variant in variants:
            if variant not in VARIANTS[fmt]:
                raise RecipeError(f"{where}.variants: unknown {fmt} variant {variant!r}; "
                                  f"known: {', '.join(VARIANTS[fmt])}")
        if not any(v in FLOAT_VARIANTS for v in variants):
            # quantized variants are made from and measured against the float one
            variants = ("f16" if fmt == "gguf" else "fp32", *variants)
        deployment = table.get("deployment_target")
        if deployment is not None:
            from edgewise.converters._coreml import deployment_target

            if fmt != "coreml":
                raise RecipeError(f"{where}.deployment_target applies to format = 'coreml' only")
            for variant in variants:
                deployment_target(variant, deployment)  # RecipeError now, not after the float export
        targets.append(Target(fmt, variants, deployment))
    return tuple(targets)


def _quant(table: Mapping[str, Any]) -> QuantSpec:
    _known(table, {"per_channel", "calibration_method", "max_float_fraction"}, "quantization")
    per_channel = table.get("per_channel", True)
    if not isinstance(per_channel, bool):
        raise RecipeError("quantization.per_channel must be true or false")
    fraction = table.get("max_float_fraction", 0.25)
    if not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
        raise RecipeError("quantization.max_float_fraction must be a number between 0 and 1")
    return QuantSpec(
        per_channel=per_channel,
        calibration_method=_choice(table.get("calibration_method", "minmax"), CALIBRATION_METHODS,
                                   "quantization.calibration_method"),
        max_float_fraction=float(fraction),
    )


def _table(raw: Mapping[str, Any], key: str, *, required: bool = False) -> Mapping[str, Any]:
    value = raw.get(key)
    if value is None:
        if required:
            raise RecipeError(f"recipe has no [{key}] table")
        return {}
    if not isinstance(value, dict):
        raise RecipeError(f"recipe key {key!r} must be a table")
    return value


def _known(table: Mapping[str, Any], keys: set[str], where: str) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; known: {sorted(keys)}")


def _str(table: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            raise RecipeError(f"{where}.{key} is required")
        return None
    if not isinstance(value, str) or not value:
        raise RecipeError(f"{where}.{key} must be a non-empty string")
    return value


def _choice(value: Any, options: tuple[str, ...], where: str) -> str:
    if value not in options:
        raise RecipeError(f"{where}: {value!r} is not one of {', '.join(options)}")
    return value


def _int(value: Any, where: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RecipeError(f"{where} must be an integer >= {minimum}, not {value!r}")
    return value


def _names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RecipeError(f"{where} must be a list of strings")
    return tuple(value)


def _existing(base: Path, rel: Any, where: str) -> Path:
    if not isinstance(rel, str) or not rel:
        raise RecipeError(f"{where} must be a path string")
    path = (base / rel).resolve() if not Path(rel).is_absolute() else Path(rel)
    if not path.exists():
        raise RecipeError(f"{where}: {rel} not found (looked at {path})",
                          hint="Paths in a recipe are relative to the recipe file.")
    return path
