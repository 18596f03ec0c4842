"""Run a recipe: source model -> float artifact -> quantized variants -> gate -> bundles + report.

Each artifact is loaded through ``edgewise.device_runtime`` (the code a device runs), fed
the recipe's evaluation data and compared with the *source* model's outputs — not with the
float export — so an error the export introduced is caught too.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgewise import device_runtime
from edgewise.bundle import Bundle, BundleBuilder, Manifest, Quantization, Requirements, Source
from edgewise.bundle._hashing import sha256_file, sha256_tree
from edgewise.converters import _data, gate
from edgewise.converters._progress import Progress
from edgewise.converters.recipe import FLOAT_VARIANTS, Recipe, load_recipe
from edgewise.converters.report import ArtifactRow, ConversionReport
from edgewise.errors import BackendUnavailableError, ConversionError, DataError, GateFailedError, RecipeError

Feeds = list[dict[str, np.ndarray]]


@dataclass
class _Source:
    """The loaded source model: how to run it, its digest, and the input/output names."""

    kind: str
    digest: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    run: Callable[[Feeds], Feeds]
    export: Callable[[Path, Feeds], None]
    extra_files: list[Path]
    tokenizer: object | None = None
    module: object | None = None  # the torch module, for PyTorch sources (teacher of a distillation)

    @property
    def params(self) -> int | None:
        module = getattr(self.module, "model", self.module)  # HfReference wraps its torch model
        return sum(p.numel() for p in module.parameters()) if module is not None else None


def convert(recipe: Recipe | str | Path, *, progress: bool = True, fail_on_gate: bool = True) -> ConversionReport:
    """Run ``recipe``; write bundles and report.{md,json} into its output dir.

    Raises GateFailedError (after writing everything) when an artifact misses a budget and
    ``fail_on_gate``; the report and each manifest record which budget and by how much.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if recipe.model.task == "text-generation":  # language models: GGUF, gated by perplexity / KL divergence
        from edgewise.converters._gguf._pipeline import convert_text_generation

        return convert_text_generation(recipe, progress=progress, fail_on_gate=fail_on_gate)
    variants = [(t.format, v) for t in recipe.targets for v in t.variants]
    steps = Progress(total=3 + 2 * len(variants) + (3 if recipe.distill else 0), enabled=progress)
    report = ConversionReport(
        model=recipe.model.name, version=recipe.model.version, task=recipe.model.task,
        source=f"{recipe.model.source} {recipe.model.path.name}", eval_data="", latency_batch=recipe.latency_batch,
    )
    recipe.output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgewise-convert-") as tmp:
        work = Path(tmp)
        with steps.step(f"load {recipe.model.source} source {recipe.model.path.name}"):
            source = _load_source(recipe, work)
        with steps.step("load calibration and evaluation data"):
            calibration, evaluation = _load_data(recipe, source)
            report.eval_data = evaluation.description
            steps.info(f"calibration: {calibration.description}; evaluation: {evaluation.description}")
        with steps.step("run the source model on the evaluation data"):
            reference = source.run(evaluation.batches)
        gate_output = _gate_output(recipe, source.output_names)
        ref_gate = np.concatenate([r[gate_output] for r in reference])
        float_row: ArtifactRow | None = None  # sizes and speed-ups are relative to this row
        if recipe.distill is not None:
            teacher = source
            with steps.step("distill a student from the teacher"):
                source = _distill_student(recipe, teacher, steps, work)
            # The teacher's own export, gated for parity, heads the table: what the student is measured against.
            path = work / "teacher" / "model.onnx"
            path.parent.mkdir(parents=True)
            with steps.step("build onnx/teacher-fp32"):
                teacher.export(path, calibration.batches)
            with steps.step("gate and bundle onnx/teacher-fp32"):
                float_quant = Quantization(scheme="none", weight_dtype="float32", activation_dtype="float32")
                float_row = _gate_and_bundle(
                    recipe, "onnx", "teacher-fp32", path, float_quant, [], teacher, evaluation, ref_gate, gate_output,
                    None, budgets=gate.default_budgets(recipe.model.task, quantized=False),
                    name=f"{recipe.model.name}-teacher",
                )
                report.rows.append(float_row)

        float_rows: dict[str, ArtifactRow] = {}  # per format: sizes and speed-ups are relative to it
        float_paths: dict[str, Path] = {}
        for fmt, variant in variants:
            try:
                with steps.step(f"build {fmt}/{variant}"):
                    artifact_path, quant, notes = _build(recipe, fmt, variant, work, source, calibration,
                                                         float_paths, steps)
            except ConversionError as exc:
                if isinstance(exc, RecipeError | DataError):
                    raise
                # One target failing (an operator it cannot lower, say) must not cost the others.
                report.rows.append(_failed_row(fmt, variant, exc))
                steps.info(f"{fmt}/{variant}: FAILED: {exc.message}")
                continue
            with steps.step(f"gate and bundle {fmt}/{variant}"):
                row = _gate_and_bundle(
                    recipe, fmt, variant, artifact_path, quant, notes, source, evaluation, ref_gate, gate_output,
                    float_row if recipe.distill is not None else float_rows.get(fmt),
                )
                if variant in FLOAT_VARIANTS and recipe.distill is None and fmt not in float_rows:
                    float_rows[fmt] = row
                report.rows.append(row)
                steps.info(f"{row.artifact}: {_row_summary(row)}")
    report.write(recipe.output_dir)
    failed = [row for row in report.rows if row.error]
    if fail_on_gate and failed:
        raise ConversionError(
            f"{len(failed)} artifact(s) could not be built: "
            + "; ".join(str(row.error) for row in failed)
            + f". The other bundles and the report are in {recipe.output_dir}",
            hint="The report lists each failure; replace the operator named, or drop that target from the recipe.",
        )
    if fail_on_gate and not report.passed:
        raise GateFailedError(
            f"{len(report.misses)} budget(s) missed; bundles and report are in {recipe.output_dir}",
            table=gate.misses_table(report.misses),
            failures=[m.to_dict() for m in report.misses],
        )
    return report


# --- source models ---------------------------------------------------------------------------

def _load_source(recipe: Recipe, work: Path) -> _Source:
    spec = recipe.model
    if spec.source == "pytorch":
        return _pytorch_source(recipe)
    if spec.source == "onnx":
        return _onnx_source(recipe)
    return _hf_source(recipe, work)


def _pytorch_source(recipe: Recipe, module=None) -> _Source:
    from edgewise.converters._torch_export import export_torch_to_onnx, run_torch, torch_module_digest

    spec = recipe.model
    module = module if module is not None else load_torch_module(spec.path, spec.factory, spec.weights)
    names_in, names_out = spec.input_names, spec.output_names

    def export(dest: Path, calibration: Feeds) -> None:
        first = calibration[0]
        export_torch_to_onnx(module, [first[n][:2] for n in names_in], dest, input_names=names_in,
                             output_names=names_out)

    return _Source(
        kind="pytorch", digest=torch_module_digest(module), input_names=names_in, output_names=names_out,
        run=lambda feeds: run_torch(module, feeds, names_in, names_out), export=export, extra_files=[], module=module,
    )


def load_torch_module(path: Path, factory: str | None, weights: Path | None):
    """A module from a Python file + factory function, or a TorchScript file; weights from a state_dict."""
    import torch

    try:
        if path.suffix == ".py":
            module_spec = importlib.util.spec_from_file_location(f"edgewise_recipe_{path.stem}", path)
            assert module_spec is not None and module_spec.loader is not None
            py_module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_spec.name] = py_module
            module_spec.loader.exec_module(py_module)
            if not hasattr(py_module, factory or ""):
                raise RecipeError(f"{path.name} defines no function {factory!r} (model.factory)")
            module = getattr(py_module, factory)()
        else:
            module = torch.jit.load(str(path), map_location="cpu")
        if weights is not None:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
            module.load_state_dict(state)
    except RecipeError:
        raise
    except Exception as exc:
        raise RecipeError(f"cannot load the PyTorch model from {path.name}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise RecipeError(f"model.factory returned {type(module).__name__}, not a torch.nn.Module")
    return module.eval()


def _onnx_source(recipe: Recipe) -> _Source:
    from edgewise.converters._torch_export import check_onnx

    path = recipe.model.path
    check_onnx(path)
    model = device_runtime.load(path, device="cpu", warmup=False)
    names_in = recipe.model.input_names or tuple(s.name for s in model.signature.inputs)
    names_out = recipe.model.output_names or tuple(s.name for s in model.signature.outputs)

    def export(dest: Path, _calibration: Feeds) -> None:
        shutil.copyfile(path, dest)

    return _Source(
        kind="onnx", digest="sha256:" + sha256_file(path), input_names=names_in, output_names=names_out,
        run=lambda feeds: [model.run(f) for f in feeds], export=export, extra_files=[],
    )


def _hf_source(recipe: Recipe, work: Path, model_dir: Path | None = None) -> _Source:
    import onnx

    from edgewise.converters._hf_export import HfReference, export_hf_to_onnx, load_tokenizer, tokenizer_files

    spec = recipe.model
    folder = model_dir or spec.path
    reference = HfReference(folder)
    tokenizer = load_tokenizer(folder)
    # The exported graph decides the names: export once now (cheap next to evaluation) and reuse it.
    exported = work / f"huggingface-export-{folder.name}" / "model.onnx"
    export_hf_to_onnx(folder, exported, task=spec.hf_task)
    graph = onnx.load(str(exported), load_external_data=False).graph
    names_in = spec.input_names or tuple(i.name for i in graph.input)
    names_out = spec.output_names or tuple(o.name for o in graph.output)

    def export(dest: Path, _calibration: Feeds) -> None:
        shutil.copyfile(exported, dest)

    return _Source(
        kind="huggingface", digest="sha256:" + sha256_tree(folder), input_names=names_in,
        output_names=names_out, run=lambda feeds: [reference.run(f, names_out) for f in feeds], export=export,
        extra_files=tokenizer_files(folder), tokenizer=tokenizer, module=reference,
    )


# --- distillation ----------------------------------------------------------------------------

def _distill_student(recipe: Recipe, teacher: _Source, steps: Progress, work: Path) -> _Source:
    """Train the student on the transfer data; the returned source is the student (teacher attached)."""
    from edgewise.converters import distill as d

    spec = recipe.distill
    assert spec is not None and teacher.module is not None
    if teacher.kind == "huggingface":
        return _distill_hf_student(recipe, teacher, steps, work)
    transfer, labels = _transfer_data(recipe, teacher.input_names)
    if spec.augment:
        if not isinstance(transfer, np.ndarray):
            raise RecipeError("distill.augment shifts images: it needs a single image input")
        count = len(transfer)
        transfer = _data.shifted_copies(transfer, spec.augment, seed=spec.training.get("seed", 0))
        labels = np.tile(labels, spec.augment + 1) if labels is not None else None
        steps.info(f"transfer data: {count} samples + {spec.augment} shifted copies = {len(transfer)}")
    if spec.student == "preset":
        student = d.student_preset(teacher.module, width=spec.width, depth=spec.depth)
    else:
        assert spec.student_path is not None
        student = load_torch_module(spec.student_path, spec.student_factory, None).train()
    config = d.DistillConfig(task="classification" if recipe.model.task == "classification" else "embedding",
                             checkpoint=_checkpoint_path(recipe, teacher), **spec.training)
    result = d.distill(teacher.module, student, transfer, labels=labels if spec.use_labels else None,
                       config=config, progress=steps.info)
    steps.info(f"student: {result.student_params:,} parameters vs teacher {teacher.params:,} "
               f"({teacher.params / result.student_params:.1f}x fewer); held-out agreement "
               f"{100 * result.heldout_agreement:.2f} % after {result.epochs_run} epochs (best {result.best_epoch})")
    return _pytorch_source(recipe, result.student)


def _distill_hf_student(recipe: Recipe, teacher: _Source, steps: Progress, work: Path) -> _Source:
    """An encoder with fewer transformer layers (copied from the teacher's), trained to match its embeddings,
    saved as a Hugging Face folder and exported by the same optimum path as any encoder."""
    import copy

    from edgewise.converters import distill as d
    from edgewise.converters._hf_embedder import HfEmbedder

    spec = recipe.distill
    assert spec is not None and spec.transfer_text is not None and teacher.tokenizer is not None
    reference = teacher.module
    sentences = _data.read_sentences(spec.transfer_text)
    encoded = teacher.tokenizer(sentences, padding=True, truncation=True, max_length=recipe.data.max_length,
                                return_tensors="np")
    transfer = {name: np.asarray(encoded[name], dtype=np.int64) for name in teacher.input_names}
    output = _gate_output(recipe, teacher.output_names)
    student_model = copy.deepcopy(reference.model)
    if reference.is_sentence_transformer:
        # sentence-transformers keeps the transformers model as submodule "model" ("auto_model" is a
        # read-only alias in 5.x: assigning it would add a second module and leave the old one in use).
        transformer = student_model[0]
        slot = "model" if "model" in transformer._modules else "auto_model"
        setattr(transformer, slot, d.student_preset(getattr(transformer, slot), width=spec.width, depth=spec.depth,
                                                    seed=spec.training.get("seed", 0)))
        small = getattr(transformer, slot)
    else:
        student_model = small = d.student_preset(student_model, width=spec.width, depth=spec.depth,
                                                 seed=spec.training.get("seed", 0))
    config = d.DistillConfig(task="embedding", checkpoint=_checkpoint_path(recipe, teacher), **spec.training)
    steps.info(f"transfer data: {len(sentences)} sentences; student keeps teacher layers "
               f"{getattr(small, 'distilled_from_layers', '?')}")
    result = d.distill(HfEmbedder(reference.model, teacher.input_names, output, reference.is_sentence_transformer),
                       HfEmbedder(student_model, teacher.input_names, output, reference.is_sentence_transformer),
                       transfer, config=config, progress=steps.info)
    steps.info(f"student: {result.student_params:,} parameters vs teacher {teacher.params:,}; held-out cosine "
               f"{result.heldout_agreement:.4f} after {result.epochs_run} epochs (best {result.best_epoch})")
    student_dir = work / "student"
    if reference.is_sentence_transformer:
        result.student.model.save(str(student_dir))
    else:
        result.student.model.save_pretrained(str(student_dir))
        teacher.tokenizer.save_pretrained(str(student_dir))
    return _hf_source(recipe, work, model_dir=student_dir)


def _checkpoint_path(recipe: Recipe, teacher: _Source) -> Path:
    """Keyed by the teacher's weights: a retrained teacher never resumes an old student."""
    return recipe.output_dir / f"{recipe.model.name}-distill-{teacher.digest.split(':')[-1][:12]}.ckpt"


def _transfer_data(recipe: Recipe, names: Sequence[str]) -> tuple[np.ndarray | dict[str, np.ndarray],
                                                                    np.ndarray | None]:
    """Unlabeled (or labelled) inputs the student learns the teacher's behaviour on."""
    spec = recipe.distill
    assert spec is not None
    if spec.transfer is not None:
        data = _data.load_npz(spec.transfer, names, batch_size=1 << 30)
        arrays = data.batches[0]
        return (arrays[names[0]] if len(names) == 1 else arrays), data.labels
    if recipe.data.builtin:
        split = _data.builtin_images(recipe.data.builtin)
        return split.train_x, split.train_y
    raise RecipeError("[distill] needs transfer data: distill.transfer = \"transfer.npz\" or data.builtin")


# --- data ------------------------------------------------------------------------------------

def _load_data(recipe: Recipe, source: _Source) -> tuple[_data.Dataset, _data.Dataset]:
    spec = recipe.data
    names = source.input_names
    if source.tokenizer is not None and spec.calibration_text and spec.eval_text:
        from edgewise.converters._hf_export import tokenize_batches

        def text(path: Path, limit: int | None) -> _data.Dataset:
            sentences = _data.read_sentences(path)[:limit]
            batches = tokenize_batches(source.tokenizer, sentences, batch_size=spec.batch_size,
                                       max_length=spec.max_length, input_names=names)
            return _data.Dataset(batches, None, f"{path.name} ({len(sentences)} sentences)")

        return text(spec.calibration_text, spec.calibration_samples), text(spec.eval_text, spec.eval_samples)
    if spec.builtin:
        if len(names) != 1:
            raise RecipeError(f"built-in data sets feed one input; the model has {list(names)}")
        split = _data.builtin_images(spec.builtin)
        cal = {names[0]: split.train_x[: spec.calibration_samples]}
        test_x, test_y = split.test_x[: spec.eval_samples], split.test_y[: spec.eval_samples]
        return (
            _data.Dataset(_data.batched(cal, spec.batch_size), None, f"{spec.builtin} train ({len(cal[names[0]])})"),
            _data.Dataset(_data.batched({names[0]: test_x}, spec.batch_size), test_y,
                          f"{spec.builtin} held-out test split ({len(test_x)} samples, labelled)"),
        )
    assert spec.calibration is not None and spec.eval is not None
    return (
        _data.load_npz(spec.calibration, names, spec.batch_size, spec.calibration_samples),
        _data.load_npz(spec.eval, names, spec.batch_size, spec.eval_samples),
    )


def _gate_output(recipe: Recipe, output_names: Sequence[str]) -> str:
    if recipe.model.gate_output:
        if recipe.model.gate_output not in output_names:
            raise RecipeError(f"model.gate_output {recipe.model.gate_output!r} is not an output: {list(output_names)}")
        return recipe.model.gate_output
    if recipe.model.task == "embedding" and "sentence_embedding" in output_names:
        return "sentence_embedding"
    return output_names[0]


# --- per-format builds -----------------------------------------------------------------------

ENTRYPOINTS = {"onnx": "model.onnx", "tflite": "model.tflite", "coreml": "model.mlpackage"}
RUNTIMES = {"onnx": "onnxruntime", "tflite": "litert", "coreml": "coremltools"}
_FLOAT = Quantization(scheme="none", weight_dtype="float32", activation_dtype="float32")


def _build(recipe: Recipe, fmt: str, variant: str, work: Path, source: _Source, calibration: _data.Dataset,
           float_paths: dict[str, Path], steps: Progress) -> tuple[Path, Quantization, list[str]]:
    """Export or quantize one artifact; ConversionError when this format cannot take the model."""
    dest = work / f"{fmt}-{variant}" / ENTRYPOINTS[fmt]
    dest.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        if variant in FLOAT_VARIANTS:
            source.export(dest, calibration.batches)
            float_paths.setdefault(fmt, dest)
            return dest, _FLOAT, []
        if fmt not in float_paths:
            raise ConversionError(f"onnx/{variant}: the float onnx export failed, nothing to quantize")
        quant, notes = _quantize(recipe, variant, float_paths[fmt], dest, calibration, source, steps)
        return dest, quant, notes
    if source.kind != "pytorch" or source.module is None:
        raise ConversionError(f"{fmt}/{variant}: the {fmt} converter needs a PyTorch source (model.source = "
                              f"'pytorch'); this recipe's source is {source.kind}")
    first = calibration.batches[0]
    names_in, names_out = source.input_names, source.output_names
    if fmt == "tflite":
        from edgewise.converters import _tflite

        if variant in FLOAT_VARIANTS:
            _tflite.export_float(source.module, first, names_in, names_out, dest)
            float_paths.setdefault(fmt, dest)
            return dest, _FLOAT, ["exported at batch 1 (litert-torch fixes shapes); larger batches run sample by "
                                  "sample in the LiteRT backend"]
        if variant == "int8-static":
            info = _tflite.quantize_static_int8(source.module, calibration.batches, names_in, names_out, dest,
                                                per_channel=recipe.quantization.per_channel,
                                                max_samples=recipe.data.calibration_samples)
            quant = Quantization(scheme="int8-static", weight_dtype="int8", activation_dtype="int8",
                                 per_channel=recipe.quantization.per_channel, calibration=info,
                                 details={"io_dtype": "int8", "io_scaled_by_runtime": True})
            return dest, quant, ["PT2E full INT8: int8 input/output tensors, scaled to float by the LiteRT backend"]
        if fmt not in float_paths:
            raise ConversionError(f"tflite/{variant}: the float tflite export failed, nothing to quantize")
        info = _tflite.quantize_with_recipe(float_paths[fmt], dest, variant)
        activation = "int8-dynamic" if variant == "int8-dynamic" else "float32"
        quant = Quantization(scheme=variant, weight_dtype="int8", activation_dtype=activation, details=info)
        return dest, quant, [f"ai-edge-quantizer recipe {info['recipe']} on the float .tflite"]
    from edgewise.converters import _coreml

    target = recipe_target(recipe, fmt)
    deployment = _coreml.deployment_target(variant, target.deployment_target if target else None)
    _coreml.export(source.module, first, names_in, names_out, dest, variant=variant, target=deployment)
    weights = {"fp32": "float32", "fp16": "float16", "int8-weight-only": "int8", "palettized4": "uint4-lut"}[variant]
    quant = Quantization(scheme="none" if variant == "fp32" else variant, weight_dtype=weights,
                         activation_dtype="float16" if variant != "fp32" else "float32",
                         details={"deployment_target": deployment})
    return dest, quant, []


def recipe_target(recipe: Recipe, fmt: str):
    return next((t for t in recipe.targets if t.format == fmt), None)


def _failed_row(fmt: str, variant: str, exc: ConversionError) -> ArtifactRow:
    return ArtifactRow(artifact=f"{fmt}/{variant}", format=fmt, variant=variant, bundle="", size_bytes=0,
                       metrics={}, latency_ms={}, budgets={}, notes=[f"not built: {exc.message}"],
                       error=exc.message)


# --- quantization ----------------------------------------------------------------------------

def _quantize(recipe: Recipe, variant: str, float_path: Path, dest: Path, calibration: _data.Dataset,
              source: _Source, steps: Progress) -> tuple[Quantization, list[str]]:
    from edgewise.converters import _onnx_quantize as q

    spec = recipe.quantization
    cal_feeds = [{n: b[n] for n in source.input_names} for b in calibration.batches]
    if variant == "int8-dynamic":
        result = q.quantize_dynamic_int8(float_path, dest, per_channel=spec.per_channel)
    elif variant == "int8-static":
        result = q.quantize_static_int8(float_path, dest, cal_feeds, method=spec.calibration_method,
                                        per_channel=spec.per_channel)
    elif variant == "int8-auto":
        score, threshold, what = _search_score(recipe, float_path, cal_feeds, source)
        base, base_note = _auto_base(recipe, float_path, dest.parent, cal_feeds)
        steps.info(base_note)
        steps.info(f"accuracy-driven search ({base}): keep sensitive nodes in float until {what} >= {threshold:g} "
                   "on the calibration data")
        result = q.quantize_accuracy_driven(
            float_path, dest, score=score, threshold=threshold, base=base,
            calibration=cal_feeds, method=spec.calibration_method, per_channel=spec.per_channel,
            max_float_fraction=spec.max_float_fraction, progress=steps.info,
        )
    else:  # pragma: no cover - recipe validation rejects unknown variants
        raise RecipeError(f"unknown variant {variant}")
    if variant == "int8-auto":
        result.notes.insert(0, base_note)
    quant = Quantization(
        scheme=result.scheme if variant != "int8-auto" else f"{result.scheme}-mixed",
        weight_dtype="int8",
        activation_dtype="int8" if result.scheme == "int8-static" else "int8-dynamic",
        per_channel=result.per_channel,
        calibration=result.calibration,
        float_nodes=tuple(result.float_nodes),
        details={"op_types": list(result.op_types), "search": result.search},
    )
    return quant, list(result.notes)


def _auto_base(recipe: Recipe, float_path: Path, work: Path, cal_feeds: Feeds) -> tuple[str, str]:
    """Dynamic or static INT8 as the base of ``int8-auto``, chosen by what is faster *here*.

    Graphs without convolutions use dynamic quantization (no calibration error on activations,
    and MatMul-heavy graphs gain most from it). With convolutions neither rule of thumb holds —
    static QDQ was 4x slower than FP32 on a small CNN here, and dynamic leaves convolutions in
    float — so both are built and timed at the report's batch size, and the faster one wins.
    """
    import onnx

    from edgewise.converters import _onnx_quantize as q

    graph = onnx.load(str(float_path), load_external_data=False).graph
    if not any(node.op_type in ("Conv", "ConvTranspose") for node in graph.node):
        return "dynamic", "int8-auto base: dynamic (no convolutions in the graph)"
    spec = recipe.quantization
    trial = work / "base-trial"
    trial.mkdir(exist_ok=True)
    candidates = {
        "dynamic": q.quantize_dynamic_int8(float_path, trial / "dynamic.onnx", per_channel=spec.per_channel).path,
        "static": q.quantize_static_int8(float_path, trial / "static.onnx", cal_feeds,
                                         method=spec.calibration_method, per_channel=spec.per_channel).path,
    }
    batch = cal_feeds[0]
    large = f"b{recipe.latency_batch}"
    timings = {
        name: measure_latency(device_runtime.load(path, device="cpu"), batch, recipe.latency_batch,
                              budget_s=0.5)[large]
        for name, path in candidates.items()
    }
    best = min(timings, key=timings.get)
    shutil.rmtree(trial, ignore_errors=True)
    return best, (f"int8-auto base: {best} (measured at batch {recipe.latency_batch}: "
                  + ", ".join(f"{k} {v:.2f} ms" for k, v in timings.items()) + ")")


def _search_score(recipe: Recipe, float_path: Path, feeds: Feeds,
                  source: _Source) -> tuple[Callable[[Path], float], float, str]:
    """Score for the accuracy-driven search: the gate's own metric, on calibration (not evaluation) data."""
    gate_output = _gate_output(recipe, source.output_names)
    float_model = device_runtime.load(float_path, device="cpu", warmup=False)
    reference = np.concatenate([float_model.run(f)[gate_output] for f in feeds])
    budgets = recipe.budgets_for("int8-auto")
    if recipe.model.task == "classification":
        metric, threshold = "top1_agreement", budgets.top1_agreement_min or 0.99
    else:
        metric, threshold = "cosine_min", budgets.cosine_min or 0.99

    def score(candidate: Path) -> float:
        model = device_runtime.load(candidate, device="cpu", warmup=False)
        out = np.concatenate([model.run(f)[gate_output] for f in feeds])
        return float(gate.compare(recipe.model.task, reference, out)[metric])

    return score, threshold, metric


# --- gate, latency, bundle -------------------------------------------------------------------

def _gate_and_bundle(recipe: Recipe, fmt: str, variant: str, artifact: Path, quant: Quantization, notes: list[str],
                     source: _Source, evaluation: _data.Dataset, ref_gate: np.ndarray, gate_output: str,
                     float_row: ArtifactRow | None, *, budgets: gate.Budgets | None = None,
                     name: str | None = None) -> ArtifactRow:
    try:
        model = device_runtime.load(artifact, device="cpu")
    except BackendUnavailableError as exc:  # Core ML off macOS: check what can be checked, run nothing
        return _unrun_bundle(recipe, fmt, variant, artifact, quant, notes, source, evaluation, float_row, exc,
                             name or recipe.model.name)
    try:
        outputs = [model.run(batch) for batch in evaluation.batches]
    except Exception as exc:
        raise DataError(f"{fmt}/{variant} could not run the evaluation data: {exc}") from exc
    candidate = np.concatenate([o[gate_output] for o in outputs])
    metrics = gate.compare(recipe.model.task, ref_gate, candidate, evaluation.labels)
    # The middle evaluation batch: text batches are sorted by length, and the first holds the shortest.
    latency = measure_latency(model, evaluation.batches[len(evaluation.batches) // 2], recipe.latency_batch)
    size = _size(artifact)
    row = ArtifactRow(
        artifact=f"{fmt}/{variant}", format=fmt, variant=variant, bundle="", size_bytes=size,
        metrics=metrics, latency_ms=latency, budgets={}, notes=list(notes), params=source.params,
    )
    large = f"b{recipe.latency_batch}"
    if float_row is not None:
        row.size_ratio = float_row.size_bytes / size
        row.speedup = float_row.latency_ms[large] / latency[large]
        metrics["speedup"] = row.speedup
        metrics["size_ratio"] = row.size_ratio
        if row.speedup < 1.0:
            row.notes.append(
                f"SLOWER than {float_row.variant} at batch {recipe.latency_batch}: {latency[large]:.2f} ms vs "
                f"{float_row.latency_ms[large]:.2f} ms ({row.speedup:.2f}×). Prefer another variant on this CPU."
            )
    budgets = budgets or recipe.budgets_for(variant)
    row.budgets = {k: v for k, v in budgets.__dict__.items() if v is not None}
    row.misses = gate.check(row.artifact, metrics, budgets)

    # Drift reference: what this artifact's inputs and outputs look like on the evaluation data.
    reference = device_runtime.build_reference(list(zip(evaluation.batches, outputs, strict=True)),
                                               recipe.model.task, description=evaluation.description)
    bundle = _write_bundle(recipe, fmt, variant, artifact, model, quant, source, evaluation, row, gate_output,
                           name or recipe.model.name, reference=reference)
    row.bundle = str(bundle.root)
    return row


def measure_latency(model: device_runtime.Model, batch: dict[str, np.ndarray], large: int,
                    *, budget_s: float = 1.0, min_runs: int = 5) -> dict[str, float]:
    """Median wall time (ms) of ``model.run`` at batch 1 and at batch ``large`` (tiled from ``batch``)."""
    n = next(iter(batch.values())).shape[0]
    reps = -(-large // n)
    big = {k: np.concatenate([v] * reps)[:large] for k, v in batch.items()}
    one = {k: v[:1] for k, v in batch.items()}
    result = {}
    for label, feed in (("b1", one), (f"b{large}", big)):
        model.run(feed)
        times = []
        deadline = time.perf_counter() + budget_s
        while len(times) < min_runs or (time.perf_counter() < deadline and len(times) < 200):
            start = time.perf_counter()
            model.run(feed)
            times.append(time.perf_counter() - start)
        result[label] = 1000.0 * float(np.median(times))
    return result


def _write_bundle(recipe: Recipe, fmt: str, variant: str, artifact: Path, model: device_runtime.Model,
                  quant: Quantization, source: _Source, evaluation: _data.Dataset, row: ArtifactRow,
                  gate_output: str, name: str, *, reference: dict | None = None) -> Bundle:
    builder = BundleBuilder()
    _add_artifact(builder, fmt, artifact)
    for extra in source.extra_files:
        builder.add_file(extra, f"tokenizer/{extra.name}", role="tokenizer")
    sample_in = {k: v[:2] for k, v in evaluation.batches[0].items()}
    sample_out = model.run(sample_in)
    quantized = variant not in FLOAT_VARIANTS
    scale = max(float(np.abs(v).max()) for v in sample_out.values()) if sample_out else 1.0
    # Quantized kernels differ slightly between CPUs (VNNI or not): allow 5% of the output range.
    builder.add_sample(sample_in, sample_out, rtol=0.05 if quantized else 1e-3,
                       atol=0.05 * scale + 1e-3 if quantized else 1e-4 * max(scale, 1.0))
    manifest = Manifest(
        name=name, version=recipe.model.version, format=fmt, task=recipe.model.task,
        entrypoint=ENTRYPOINTS[fmt], files=(), signature=model.signature, quantization=quant,
        source=Source(kind=source.kind, digest=source.digest, name=recipe.model.path.name),
        edgewise_version="",
        metrics={
            "gate": {"passed": row.passed, "output": gate_output, "budgets": row.budgets,
                     "misses": [m.to_dict() for m in row.misses], "eval_data": evaluation.description},
            "vs_source": row.metrics,
            "latency_ms": row.latency_ms,
            "size_ratio_vs_float": row.size_ratio,
        },
        requirements=Requirements(backends=(RUNTIMES[fmt],)),
        extra={"variant": variant, "notes": row.notes},
        reference=reference,
    )
    dest = recipe.output_dir / f"{recipe.model.name}-{fmt}-{variant}"
    if recipe.distill is not None and name == recipe.model.name:
        manifest = replace(manifest, extra={**manifest.extra, "distilled_from": recipe.model.path.name})
    return builder.write(dest, manifest)


def _size(artifact: Path) -> int:
    return sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file()) if artifact.is_dir() \
        else artifact.stat().st_size


def _add_artifact(builder: BundleBuilder, fmt: str, artifact: Path) -> None:
    if artifact.is_dir():  # .mlpackage: every file of the package, each hashed
        builder.add_tree(artifact, ENTRYPOINTS[fmt], role="model")
    else:
        builder.add_file(artifact, ENTRYPOINTS[fmt], role="model")


def _unrun_bundle(recipe: Recipe, fmt: str, variant: str, artifact: Path, quant: Quantization, notes: list[str],
                  source: _Source, evaluation: _data.Dataset, float_row: ArtifactRow | None,
                  reason: BackendUnavailableError, name: str) -> ArtifactRow:
    """A bundle for an engine that cannot run here: checked statically, never claimed to be gated.

    The stored sample's expected output is the *source model's* (with tolerances for float16 / compressed
    weights), so a device that can run it checks it after an install; the manifest says which is which.
    """
    from edgewise.converters import _coreml

    target = quant.details.get("deployment_target", "")
    static = _coreml.checks(artifact, source.input_names, source.output_names, variant, target)
    signature = device_runtime.inspect_file(artifact)["signature"]
    size = _size(artifact)
    row = ArtifactRow(
        artifact=f"{fmt}/{variant}", format=fmt, variant=variant, bundle="", size_bytes=size, metrics={},
        latency_ms={}, budgets={}, notes=[*notes, f"accuracy not gated here: {reason.message}"],
        params=source.params, not_run=reason.message,
    )
    if float_row is not None:
        row.size_ratio = float_row.size_bytes / size
    builder = BundleBuilder()
    _add_artifact(builder, fmt, artifact)
    fixed_batch = isinstance(signature.inputs[0].shape[0], int) if signature.inputs else False
    sample_in = {k: v[: 1 if fixed_batch else 2] for k, v in evaluation.batches[0].items()}
    sample_out = source.run([sample_in])[0]
    # A flexible-batch ML program leaves output shapes open: take them from the source model's output.
    signature = replace(signature, outputs=tuple(
        spec if spec.shape or spec.name not in sample_out else replace(spec, shape=("batch", *sample_out[spec.name]
                                                                                     .shape[1:]))
        for spec in signature.outputs))
    scale = max(float(np.abs(v).max()) for v in sample_out.values()) if sample_out else 1.0
    loose = 0.1 if variant == "palettized4" else 0.05
    builder.add_sample(sample_in, sample_out, rtol=loose, atol=loose * scale + 1e-3)
    manifest = Manifest(
        name=name, version=recipe.model.version, format=fmt, task=recipe.model.task,
        entrypoint=ENTRYPOINTS[fmt], files=(), signature=signature, quantization=quant,
        source=Source(kind=source.kind, digest=source.digest, name=recipe.model.path.name),
        edgewise_version="",
        metrics={
            "gate": {"passed": None, "not_run": reason.message, "eval_data": evaluation.description},
            **static,
            "size_ratio_vs_float": row.size_ratio,
        },
        requirements=Requirements(backends=(RUNTIMES[fmt],)),
        extra={"variant": variant, "notes": row.notes, "sample_expected_from": "source model (not run here)",
               "deployment_target": target},
    )
    bundle = builder.write(recipe.output_dir / f"{recipe.model.name}-{fmt}-{variant}", manifest)
    row.bundle = str(bundle.root)
    return row


def _row_summary(row: ArtifactRow) -> str:
    if row.not_run:
        return f"{row.size_bytes / 1e6:.2f} MB, checked statically (not run: {row.not_run.split(';')[0]})"
    m = row.metrics
    quality = (f"top-1 agreement {100 * m['top1_agreement']:.2f}%" if "top1_agreement" in m
               else f"cosine min {m['cosine_min']:.5f}")
    return f"{row.size_bytes / 1e6:.2f} MB, {quality}, gate {'pass' if row.passed else 'FAIL'}"


__all__ = ["convert", "load_torch_module", "measure_latency"]
