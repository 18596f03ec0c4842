"""``edgewise convert`` for language models: HF checkpoint -> GGUF float + llama.cpp quants, gated.

Steps: check the checkpoint (architecture, tokenizer) before anything slow; write the float
GGUF and check it against transformers on the same prompt (tokens, logits, greedy text);
measure the float model's next-token distributions on the evaluation text; quantize each
variant with llama.cpp and measure perplexity, KL divergence and top-1 agreement against the
float file, plus generation speed; bundle each file with its measurements; gate.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgewise.bundle import BundleBuilder, Manifest, Quantization, Requirements, Signature, Source
from edgewise.bundle._hashing import sha256_file
from edgewise.converters import gate
from edgewise.converters._gguf import _quality
from edgewise.converters._gguf._checkpoint import read_checkpoint
from edgewise.converters._gguf._quantize import quantize_gguf
from edgewise.converters._gguf._writer import FLOAT_TYPES, write_gguf
from edgewise.converters._progress import Progress
from edgewise.converters.recipe import Recipe
from edgewise.converters.report import ArtifactRow, ConversionReport
from edgewise.device_runtime import usable_cores
from edgewise.errors import DataError, GateFailedError, RecipeError


def convert_text_generation(recipe: Recipe, *, progress: bool = True, fail_on_gate: bool = True) -> ConversionReport:
    spec = recipe.gguf
    targets = [t for t in recipe.targets if t.format == "gguf"]
    others = [t.format for t in recipe.targets if t.format != "gguf"]
    if others or not targets:
        raise RecipeError(f"text-generation models convert to GGUF only; the recipe asks for {others or 'nothing'}",
                          hint='Use [[targets]] format = "gguf" with variants such as ["f16", "q8_0", "q4_k_m"].')
    variants = [v for t in targets for v in t.variants]
    floats = [v for v in variants if v in FLOAT_TYPES]
    checkpoint = read_checkpoint(recipe.model.path)  # architecture and tokenizer problems fail here, in ms
    text = _eval_text(recipe)
    threads = spec.threads or usable_cores()
    steps = Progress(total=2 + 2 * len(variants), enabled=progress)
    report = ConversionReport(
        model=recipe.model.name, version=recipe.model.version, task=recipe.model.task,
        source=f"huggingface {recipe.model.path.name} ({checkpoint.hf_architecture})",
        eval_data=f"{_text_name(recipe)} ({spec.eval_chunks} chunks of {spec.eval_ctx} tokens, second halves scored)",
        latency_batch=1,
    )
    digest = "sha256:" + sha256_file(checkpoint.weight_files[0])
    recipe.output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgewise-gguf-") as tmp:
        work = Path(tmp)
        reference_path: Path | None = None
        reference = None
        float_row: ArtifactRow | None = None
        params = 0
        for variant in floats:
            path = work / f"{variant}.gguf"
            with steps.step(f"write gguf/{variant} from {checkpoint.path.name}"):
                written = write_gguf(checkpoint, path, dtype=variant, pre_tokenizer=spec.pre_tokenizer,
                                     progress=steps.info)
                params = written.params
                steps.info(f"{written.tensors} tensors, {params / 1e6:.1f} M parameters, "
                           f"pre-tokenizer {written.vocab.pre}, vocabulary {len(written.vocab.tokens)}")
            with steps.step(f"check gguf/{variant} against transformers"):
                metrics = _quality.parity_with_transformers(checkpoint.path, path, spec.parity_prompt, threads=threads)
                if reference is None:
                    reference_path = path
                    reference = _quality.measure_reference(path, text, n_ctx=spec.eval_ctx,
                                                           n_chunks=spec.eval_chunks, threads=threads)
                metrics["ppl"] = reference.ppl if path == reference_path else None
                metrics["tokens_per_s"] = _quality.decode_speed(path, spec.parity_prompt, n_tokens=spec.speed_tokens,
                                                                threads=threads)
                row = _row(recipe, variant, path, metrics, params, float_row, notes=[])
                if float_row is None:
                    float_row = row
                _bundle(recipe, variant, path, row, digest, checkpoint.hf_architecture, written.vocab.pre,
                        report.eval_data)
                report.rows.append(row)
                steps.info(_summary(row))
        assert reference is not None and reference_path is not None
        for variant in [v for v in variants if v not in FLOAT_TYPES]:
            path = work / f"{variant}.gguf"
            with steps.step(f"quantize gguf/{variant} with llama.cpp"):
                quantized = quantize_gguf(reference_path, path, variant, threads=threads)
                notes = [quantized.describe_fallbacks()] if quantized.fallback_tensors else []
                for note in notes:
                    steps.info(note)
            with steps.step(f"gate and bundle gguf/{variant}"):
                quality = _quality.measure_candidate(path, reference, threads=threads)
                metrics = {**quality.as_metrics(), "bits_per_weight": quantized.bits_per_weight,
                           "tensor_types": quantized.tensor_types, "fallback_tensors": quantized.fallback_tensors,
                           "tokens_per_s": _quality.decode_speed(path, spec.parity_prompt,
                                                                 n_tokens=spec.speed_tokens, threads=threads)}
                row = _row(recipe, variant, path, metrics, params, float_row, notes=notes)
                _bundle(recipe, variant, path, row, digest, checkpoint.hf_architecture, None, report.eval_data)
                report.rows.append(row)
                steps.info(_summary(row))
    report.write(recipe.output_dir)
    if fail_on_gate and not report.passed:
        raise GateFailedError(
            f"{len(report.misses)} budget(s) missed; bundles and report are in {recipe.output_dir}",
            table=gate.misses_table(report.misses), failures=[m.to_dict() for m in report.misses],
        )
    return report


def _text_name(recipe: Recipe) -> str:
    return "scikit-learn's data set descriptions" if recipe.data.eval_text is None else recipe.data.eval_text.name


def _eval_text(recipe: Recipe) -> str:
    if recipe.data.eval_text is None:
        return _quality.default_eval_text()
    try:
        return recipe.data.eval_text.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read data.eval_text {recipe.data.eval_text}: {exc}") from exc


def _row(recipe: Recipe, variant: str, path: Path, metrics: dict, params: int, float_row: ArtifactRow | None,
         notes: list[str]) -> ArtifactRow:
    budgets = recipe.budgets_for(variant)
    size = path.stat().st_size
    if float_row is not None:
        metrics["size_ratio"] = float_row.size_bytes / size
        metrics["speedup"] = metrics["tokens_per_s"] / float_row.metrics["tokens_per_s"]
    misses = gate.check(f"gguf/{variant}", metrics, budgets)
    return ArtifactRow(
        artifact=f"gguf/{variant}", format="gguf", variant=variant,
        bundle=str(recipe.output_dir / f"{recipe.model.name}-gguf-{variant}"), size_bytes=size, metrics=metrics,
        latency_ms={}, budgets={k: v for k, v in budgets.__dict__.items() if v is not None}, misses=misses,
        notes=notes, size_ratio=metrics.get("size_ratio"), params=params, speedup=metrics.get("speedup"),
    )


def _bundle(recipe: Recipe, variant: str, path: Path, row: ArtifactRow, digest: str, arch: str,
            pre_tokenizer: str | None, eval_data: str) -> None:
    from edgewise.device_runtime import read_gguf_info

    info = read_gguf_info(path)
    builder = BundleBuilder()
    builder.add_file(path, "model.gguf", role="model")
    is_float = variant in FLOAT_TYPES
    quant = Quantization(
        scheme="none" if is_float else f"llama.cpp-{variant}",
        weight_dtype=variant if is_float else variant.upper(),
        activation_dtype="float32",
        details={"tool": "llama.cpp llama_model_quantize"} if not is_float else {},
    )
    manifest = Manifest(
        name=recipe.model.name, version=recipe.model.version, format="gguf", task="text-generation",
        entrypoint="model.gguf", files=(), signature=Signature(inputs=(), outputs=()), quantization=quant,
        source=Source(kind="huggingface", digest=digest, name=recipe.model.path.name), edgewise_version="",
        metrics={"gate": {"passed": row.passed, "budgets": row.budgets, "misses": [m.to_dict() for m in row.misses],
                          "eval_data": eval_data if variant not in FLOAT_TYPES else "parity prompt vs transformers"},
                 "quality": row.metrics},
        requirements=Requirements(backends=("llama.cpp",), min_ram_bytes=int(row.size_bytes * 1.2) + (64 << 20)),
        limits={"context_length": info.context_length, "architecture": info.architecture},
        extra={"variant": variant, "notes": row.notes, "hf_architecture": arch,
               **({"pre_tokenizer": pre_tokenizer} if pre_tokenizer else {})},
    )
    builder.write(recipe.output_dir / f"{recipe.model.name}-gguf-{variant}", manifest)


def _summary(row: ArtifactRow) -> str:
    m = row.metrics
    parts = [f"{row.size_bytes / 1e6:.1f} MB"]
    if m.get("kld_mean") is not None:
        parts.append(f"PPL {m['ppl']:.3f} ({m['ppl_delta_pct']:+.2f} %), KLD {m['kld_mean']:.4f}, "
                     f"top-1 {100 * m['top1_agreement']:.1f} %")
    else:
        parts.append(f"vs transformers: top-1 {100 * m['top1_agreement']:.1f} %, max |Δlogit| {m['max_abs_error']:.3g}")
    parts.append(f"{m['tokens_per_s']:.1f} tokens/s, gate {'pass' if row.passed else 'FAIL'}")
    return ", ".join(parts)
