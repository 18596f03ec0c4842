"""Shadow evaluation: a candidate version runs beside the served one, off the caller's path.

The caller's thread only offers a sampled request to a bounded mailbox (``_worker.Mailbox``; a full
one sheds the request and counts it). One background worker runs the candidate on it and
compares the two outputs with the metrics the bundle's accuracy gate uses (top-1 agreement for
classification, cosine per sample, max absolute error). ``decide_promotion`` is the pure policy
over those figures that the sync client asks before it switches to the candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgewise.device_runtime._frozen import thawed
from edgewise.device_runtime._worker import Mailbox

_EPS = 1e-12


@dataclass
class ShadowStats:
    """Running agreement of candidate vs served outputs, over ``samples`` rows (a batch of B is B rows)."""

    samples: int = 0
    top1_agree: int = 0
    cosine_sum: float = 0.0
    cosine_min: float = 1.0
    max_abs_error: float = 0.0
    offered: int = 0
    runs: int = 0
    shed: int = 0
    errors: int = 0
    classification: bool = False

    def add(self, served: np.ndarray, candidate: np.ndarray) -> None:
        ref = np.asarray(served, dtype=np.float64)
        cand = np.asarray(candidate, dtype=np.float64)
        if ref.shape != cand.shape:
            raise ValueError(f"shadow output shape {cand.shape} differs from the served {ref.shape}")
        n = ref.shape[0] if ref.ndim else 1
        ref, cand = ref.reshape(n, -1), cand.reshape(n, -1)
        cosine = (ref * cand).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1) + _EPS)
        self.samples += n
        self.cosine_sum += float(cosine.sum())
        self.cosine_min = min(self.cosine_min, float(cosine.min()))
        self.max_abs_error = max(self.max_abs_error, float(np.abs(ref - cand).max()))
        if self.classification:
            self.top1_agree += int((ref.argmax(1) == cand.argmax(1)).sum())

    def metrics(self) -> dict[str, Any]:
        """The gate's metric names, so a policy reads like the bundle's budgets."""
        out: dict[str, Any] = {"samples": self.samples, "offered": self.offered, "shed": self.shed,
                               "errors": self.errors}
        if self.samples:
            out.update(cosine_mean=self.cosine_sum / self.samples, cosine_min=self.cosine_min,
                       max_abs_error=self.max_abs_error)
            if self.classification:
                out["top1_agreement"] = self.top1_agree / self.samples
        return out


@dataclass(frozen=True)
class PromotionPolicy:
    """When a shadow candidate may replace the served version.

    ``min_samples`` compared rows first; then every set budget must hold (same names and
    directions as the converter's gate budgets). ``from_manifest`` takes the budgets the
    candidate's own bundle was gated with, so the device holds it to the promise it shipped with.
    """

    min_samples: int = 200
    top1_agreement_min: float | None = None
    cosine_min: float | None = None
    cosine_mean_min: float | None = None
    max_abs_error_max: float | None = None
    max_error_rate: float = 0.0

    @classmethod
    def from_manifest(cls, metrics: Mapping[str, Any], task: str, *, min_samples: int = 200) -> PromotionPolicy:
        budgets = (metrics.get("gate") or {}).get("budgets") or {}
        known = ("top1_agreement_min", "cosine_min", "cosine_mean_min", "max_abs_error_max")
        picked = {k: float(budgets[k]) for k in known if budgets.get(k) is not None}
        if not picked:  # a bundle gated with nothing: the gate's own defaults for a quantized artifact
            picked = {"top1_agreement_min": 0.98} if task == "classification" else {"cosine_min": 0.99}
        return cls(min_samples=min_samples, **picked)


@dataclass(frozen=True)
class PromotionDecision:
    """``action``: "promote", "reject" (enough samples, a budget missed) or "wait" (too few samples)."""

    action: str
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def promote(self) -> bool:
        return self.action == "promote"

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason, "metrics": self.metrics}


_CHECKS = (("top1_agreement", "top1_agreement_min", "min"), ("cosine_min", "cosine_min", "min"),
           ("cosine_mean", "cosine_mean_min", "min"), ("max_abs_error", "max_abs_error_max", "max"))


def decide_promotion(metrics: Mapping[str, Any], policy: PromotionPolicy) -> PromotionDecision:
    """Pure: the shadow figures against the policy."""
    samples = int(metrics.get("samples", 0))
    runs = samples + int(metrics.get("errors", 0))
    if runs and metrics.get("errors", 0) / runs > policy.max_error_rate:
        return PromotionDecision("reject", f"the candidate failed on {metrics['errors']} of {runs} shadow runs",
                                 dict(metrics))
    if samples < policy.min_samples:
        return PromotionDecision("wait", f"{samples} of {policy.min_samples} shadow samples compared", dict(metrics))
    misses = []
    for metric, budget_name, direction in _CHECKS:
        budget = getattr(policy, budget_name)
        if budget is None:
            continue
        actual = metrics.get(metric)
        if actual is None:
            misses.append(f"{metric} not measured (budget {budget:g})")
        elif (actual < budget) if direction == "min" else (actual > budget):
            op = ">=" if direction == "min" else "<="
            misses.append(f"{metric} {actual:.6g} (needs {op} {budget:g})")
    if misses:
        return PromotionDecision("reject", "; ".join(misses) + f" over {samples} samples", dict(metrics))
    return PromotionDecision("promote", f"all budgets held over {samples} shadow samples", dict(metrics))


class ShadowRunner:
    """A background worker (at low CPU priority) that runs ``candidate`` on offered requests and keeps ``stats``.

    ``candidate`` is any callable feed -> outputs (a ``Model.run``). ``output`` is the tensor the
    gate compares (the bundle's gate output), the first output when None.
    """

    def __init__(self, candidate: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], *,
                 output: str | None = None, classification: bool = False, queue_size: int = 64,
                 interval: float = 0.02) -> None:
        self._candidate = candidate
        self._output = output
        self.stats = ShadowStats(classification=classification)
        self._mailbox = Mailbox(self._handle, capacity=queue_size, interval=interval, name="edgewise-shadow")

    def offer(self, feed: Mapping[str, np.ndarray] | list[tuple],
              outputs: Mapping[str, np.ndarray] | list[tuple]) -> bool:
        """Called on the caller's thread: O(1), never blocks, wakes nobody; False when full (shed, counted).

        ``feed`` and ``outputs`` are arrays the caller will not change, or ``frozen`` copies.
        """
        return self._mailbox.put((feed, outputs))

    def metrics(self) -> dict[str, Any]:
        self.stats.shed = self._mailbox.shed
        self.stats.offered = self.stats.runs + self.stats.errors + self._mailbox.shed + len(self._mailbox)
        return self.stats.metrics()

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until everything offered so far was compared (tests, shutdown, benchmarks)."""
        self._mailbox.flush(timeout)
        self.metrics()

    def close(self, timeout: float = 10.0) -> None:
        self._mailbox.close(timeout)

    def _handle(self, items: list[tuple]) -> None:
        # Candidate runs release the GIL (engine code); the comparisons are done once per drained
        # batch, vectorised, so this thread holds the GIL for a few numpy calls, not a few per request.
        pairs: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        for feed, outputs in items:
            try:
                if type(feed) is list:
                    feed, outputs = thawed(feed), thawed(outputs)
                got = self._candidate(feed)
                name = self._output or next(iter(outputs))
                served, candidate = np.asarray(outputs[name]), np.asarray(got[name])
                if served.shape != candidate.shape:
                    raise ValueError(f"candidate output shape {candidate.shape} differs from {served.shape}")
            except Exception:  # a broken candidate is a finding, not a crash of the app
                self.stats.errors += 1
                continue
            n = served.shape[0] if served.ndim else 1
            served, candidate = served.reshape(n, -1), candidate.reshape(n, -1)
            group = pairs.setdefault(served.shape[1], ([], []))
            group[0].append(served)
            group[1].append(candidate)
            self.stats.runs += 1
        for served_rows, candidate_rows in pairs.values():
            self.stats.add(np.concatenate(served_rows), np.concatenate(candidate_rows))
