"""The conversion report: one row per artifact (size, latency, accuracy, gate), as Markdown and JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgewise.converters.gate import Miss, misses_table


@dataclass
class ArtifactRow:
    artifact: str  # e.g. "onnx/int8-static"
    format: str
    variant: str
    bundle: str
    size_bytes: int
    metrics: dict[str, Any]
    latency_ms: dict[str, float]
    budgets: dict[str, Any]
    misses: list[Miss] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    size_ratio: float | None = None  # float artifact size / this size
    params: int | None = None  # parameters of the (source) model this artifact was made from
    speedup: float | None = None  # float latency / this latency at the large batch
    error: str | None = None  # the artifact could not be built (the other targets still were)
    not_run: str | None = None  # built and checked statically, but its engine cannot run here (Core ML on Linux)

    @property
    def passed(self) -> bool:
        return not self.misses and not self.error

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["misses"] = [m.to_dict() for m in self.misses]
        data["passed"] = self.passed
        return data


@dataclass
class ConversionReport:
    model: str
    version: str
    task: str
    source: str
    eval_data: str
    latency_batch: int
    rows: list[ArtifactRow] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def misses(self) -> list[Miss]:
        return [m for row in self.rows for m in row.misses]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "task": self.task, "source": self.source,
            "eval_data": self.eval_data, "latency_batch": self.latency_batch, "passed": self.passed,
            "artifacts": [row.to_dict() for row in self.rows],
        }

    def table(self) -> str:
        """The comparison table people read in CI logs and pull requests."""
        if self.task == "text-generation":
            return self._text_table()
        b = self.latency_batch
        quality = "top-1 agree / accuracy (Δ pts)" if self.task == "classification" else "cosine mean / min"
        lines = [
            f"| artifact | params | size | ×smaller | b1 ms | b{b} ms | speedup b{b} | {quality} | max abs err "
            "| gate |",
            "|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
        ]
        for row in self.rows:
            m = row.metrics
            if row.error or row.not_run:
                status = "NOT BUILT" if row.error else "not run here"
                size = "-" if row.error else _mb(row.size_bytes)
                lines.append(f"| {row.artifact} | {_params(row.params)} | {size} | {_x(row.size_ratio)} | - | - | - "
                             f"| - | - | {status} |")
                continue
            if self.task == "classification":
                acc = (f" / {100 * m['accuracy']:.2f}% ({-m['accuracy_drop_pct']:+.2f})"
                       if "accuracy" in m else "")
                q = f"{100 * m.get('top1_agreement', float('nan')):.2f}%{acc}"
            else:
                q = f"{m.get('cosine_mean', float('nan')):.5f} / {m.get('cosine_min', float('nan')):.5f}"
            lines.append(
                f"| {row.artifact} | {_params(row.params)} | {_mb(row.size_bytes)} | {_x(row.size_ratio)} | "
                f"{row.latency_ms.get('b1', float('nan')):.3f} | {row.latency_ms.get(f'b{b}', float('nan')):.2f} | "
                f"{_x(row.speedup)} | {q} | {m.get('max_abs_error', float('nan')):.3g} | "
                f"{'pass' if row.passed else 'FAIL'} |"
            )
        return "\n".join(lines)

    def _text_table(self) -> str:
        """Language models, as llama.cpp's quantize README tabulates them (quality vs the float file)."""
        lines = ["| artifact | bits/weight | size | ×smaller | PPL | ΔPPL | KLD mean | KLD p99 | top-1 | tokens/s "
                 "| gate |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for row in self.rows:
            m = row.metrics
            bpw = m.get("bits_per_weight")
            kld = m.get("kld_mean")
            delta = "-" if kld is None else f"{m['ppl_delta_pct']:+.2f} %"
            lines.append(
                f"| {row.artifact} | {'-' if bpw is None else f'{bpw:.2f}'} | {_mb(row.size_bytes)} | "
                f"{_x(row.size_ratio)} | {_num(m.get('ppl'), '.3f')} | "
                f"{delta} | {_num(kld, '.4f')} | "
                f"{_num(m.get('kld_p99'), '.3f')} | {100 * m.get('top1_agreement', float('nan')):.1f} % | "
                f"{m.get('tokens_per_s', float('nan')):.1f} | {'pass' if row.passed else 'FAIL'} |"
            )
        lines.append("")
        lines.append("Float rows: top-1 = next-token agreement with transformers on the parity prompt; "
                     "quantized rows: vs the first float GGUF on the evaluation text.")
        return "\n".join(lines)

    def markdown(self) -> str:
        parts = [
            f"# Conversion report: {self.model} {self.version}",
            "",
            f"Task: {self.task}. Source: {self.source}. Compared with the source model on {self.eval_data}.",
            "",
            self.table(),
        ]
        notes = [(row.artifact, note) for row in self.rows for note in row.notes]
        if notes:
            parts += ["", "## Notes", ""] + [f"- **{artifact}**: {note}" for artifact, note in notes]
        if self.misses:
            parts += ["", "## Budgets missed", "", misses_table(self.misses)]
        return "\n".join(parts) + "\n"

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        md, js = out_dir / "report.md", out_dir / "report.json"
        md.write_text(self.markdown(), encoding="utf-8")
        js.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return md, js


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _params(count: int | None) -> str:
    if count is None:
        return "-"
    return f"{count / 1e6:.2f} M" if count >= 1e6 else f"{count / 1e3:.1f} k"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"
