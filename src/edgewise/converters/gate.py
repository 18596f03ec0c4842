"""The accuracy gate: compare an artifact's outputs with its source model's, against budgets.

Pure functions over arrays: no engine, no disk. The pipeline collects outputs; this module
decides. Metrics:

* every task: ``cosine_mean`` / ``cosine_min`` (per sample, flattened), ``max_abs_error``;
* classification: ``top1_agreement`` with the source, and with labels ``accuracy`` of both and
  ``accuracy_drop_pct`` (percentage points lost).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from edgewise.errors import RecipeError

_EPS = 1e-12


@dataclass(frozen=True)
class Budgets:
    """Limits an artifact must meet against its source; ``None`` means not checked."""

    top1_agreement_min: float | None = None
    accuracy_drop_max_pct: float | None = None
    cosine_min: float | None = None
    cosine_mean_min: float | None = None
    max_abs_error_max: float | None = None
    speedup_min: float | None = None  # vs the float artifact at the report's batch size
    size_ratio_min: float | None = None  # float artifact size / this artifact's size
    kld_max: float | None = None  # language models: mean KL divergence from the float model's next-token distribution
    ppl_delta_max_pct: float | None = None  # language models: perplexity increase over the float model, in %

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "budgets") -> Budgets:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(f"{where}: unknown budget(s) {unknown}; known: {sorted(known)}")
        values = {}
        for key, value in data.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RecipeError(f"{where}.{key} must be a number, not {value!r}")
            values[key] = float(value)
        return cls(**values)

    def merged(self, override: Budgets) -> Budgets:
        return Budgets(**{f.name: getattr(override, f.name) if getattr(override, f.name) is not None
                          else getattr(self, f.name) for f in fields(self)})


# (metric, budget field, direction): "min" means the metric must be >= the budget.
_CHECKS = (
    ("top1_agreement", "top1_agreement_min", "min"),
    ("accuracy_drop_pct", "accuracy_drop_max_pct", "max"),
    ("cosine_min", "cosine_min", "min"),
    ("cosine_mean", "cosine_mean_min", "min"),
    ("max_abs_error", "max_abs_error_max", "max"),
    ("speedup", "speedup_min", "min"),
    ("size_ratio", "size_ratio_min", "min"),
    ("kld_mean", "kld_max", "max"),
    ("ppl_delta_pct", "ppl_delta_max_pct", "max"),
)


def default_budgets(task: str, quantized: bool) -> Budgets:
    """Budgets used when the recipe names none: float exports must match the source almost exactly."""
    if task == "text-generation":
        # float: next-token argmax vs transformers on the parity prompt; quantized: vs the float GGUF.
        return Budgets(top1_agreement_min=0.9) if not quantized else Budgets(kld_max=0.1, top1_agreement_min=0.8)
    if not quantized:
        return Budgets(cosine_min=0.9999, top1_agreement_min=0.999 if task == "classification" else None)
    if task == "classification":
        return Budgets(top1_agreement_min=0.98, accuracy_drop_max_pct=1.0)
    return Budgets(cosine_min=0.99)


def compare(task: str, reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """Metrics of ``candidate`` against ``reference`` (both [N, ...], same shape)."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"output shapes differ: source {reference.shape}, artifact {candidate.shape}")
    n = reference.shape[0] if reference.ndim else 1
    ref = reference.reshape(n, -1)
    cand = candidate.reshape(n, -1)
    cosine = (ref * cand).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1) + _EPS)
    metrics: dict[str, Any] = {
        "samples": int(n),
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "max_abs_error": float(np.abs(ref - cand).max()),
        "mean_abs_error": float(np.abs(ref - cand).mean()),
    }
    if task == "classification":
        ref_top1 = ref.argmax(1)
        cand_top1 = cand.argmax(1)
        metrics["top1_agreement"] = float((ref_top1 == cand_top1).mean())
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            metrics["accuracy_source"] = float((ref_top1 == labels).mean())
            metrics["accuracy"] = float((cand_top1 == labels).mean())
            metrics["accuracy_drop_pct"] = 100.0 * (metrics["accuracy_source"] - metrics["accuracy"])
    return metrics


@dataclass(frozen=True)
class Miss:
    """One budget an artifact missed."""

    artifact: str
    metric: str
    budget: float
    actual: float
    direction: str

    @property
    def by(self) -> float:
        return self.budget - self.actual if self.direction == "min" else self.actual - self.budget

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "metric": self.metric, "budget": self.budget,
                "actual": self.actual, "direction": self.direction, "missed_by": self.by}


def check(artifact: str, metrics: Mapping[str, Any], budgets: Budgets) -> list[Miss]:
    """Every budget ``metrics`` misses. A budget whose metric was not measured is not checked."""
    misses = []
    for metric, field_name, direction in _CHECKS:
        budget = getattr(budgets, field_name)
        actual = metrics.get(metric)
        if budget is None or actual is None:
            continue
        failed = actual < budget if direction == "min" else actual > budget
        if failed:
            misses.append(Miss(artifact, metric, budget, float(actual), direction))
    return misses


def misses_table(misses: Sequence[Miss]) -> str:
    """Markdown table: which artifact missed which budget by how much."""
    rows = ["| artifact | metric | budget | actual | missed by |", "|---|---|---|---|---|"]
    for m in misses:
        op = ">=" if m.direction == "min" else "<="
        rows.append(f"| {m.artifact} | {m.metric} | {op} {m.budget:g} | {m.actual:.6g} | {m.by:.4g} |")
    return "\n".join(rows)
