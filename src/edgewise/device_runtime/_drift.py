"""Drift signal: per-sample summaries of inputs and outputs, binned like the reference, compared by PSI.

The converter calls ``build_reference`` on its evaluation data and stores the result in the
manifest (``Manifest.reference``); the runtime calls ``summarise`` on sampled live requests with
the *same* code, counts them into the reference's bins and computes the population stability
index per feature:

    PSI = sum_i (live_i - ref_i) * ln(live_i / ref_i)      (fractions per bin)

Rule of thumb in credit-risk practice, where PSI comes from: < 0.1 stable, 0.1-0.25 moderate
shift, > 0.25 large shift. Bins are the reference's deciles (equal mass), so every bin starts with
~10 % and a shift of any part of the distribution shows.

Everything here is pure and numpy-only; ``DriftMonitor`` is the small stateful part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_FLOOR = 1e-4  # fraction given to an empty bin, so ln() stays finite (common PSI practice)
NUMERIC_KINDS = "biuf"


def summarise(tensors: Mapping[str, np.ndarray], role: str, task: str) -> dict[str, np.ndarray]:
    """Per-sample scalar features, ``{"<role>:<tensor>:<stat>": values[N]}``.

    Inputs: mean and standard deviation of each numeric tensor. Outputs: for classification the
    predicted class (``top1``) and the top score (``max``, confidence or logit); otherwise the mean
    and the L2 norm. Non-numeric tensors (strings) are skipped.
    """
    features: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        array = np.asarray(value)
        if array.dtype.kind not in NUMERIC_KINDS or array.ndim == 0:
            continue
        flat = array.reshape(array.shape[0], -1).astype(np.float64, copy=False)
        if flat.shape[1] == 0:
            continue
        prefix = f"{role}:{name}"
        if role == "input":
            features[f"{prefix}:mean"] = flat.mean(1)
            features[f"{prefix}:std"] = flat.std(1)
        elif task == "classification":
            features[f"{prefix}:top1"] = flat.argmax(1).astype(np.float64)
            features[f"{prefix}:max"] = flat.max(1)
        else:
            features[f"{prefix}:mean"] = flat.mean(1)
            features[f"{prefix}:norm"] = np.linalg.norm(flat, axis=1)
    return features


@dataclass(frozen=True)
class FeatureReference:
    """One feature's reference: bin edges (interior; bins are open at both ends) and fractions."""

    name: str
    edges: tuple[float, ...]
    fractions: tuple[float, ...]
    categorical: bool = False

    def bin(self, values: np.ndarray) -> np.ndarray:
        """Bin index of each value (a category index for categorical features, clipped to the known ones)."""
        if self.categorical:
            return np.clip(values.astype(np.int64), 0, len(self.fractions) - 1)
        return np.searchsorted(np.asarray(self.edges), values, side="right")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "edges": list(self.edges), "fractions": list(self.fractions),
                "categorical": self.categorical}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureReference:
        return cls(name=str(data["name"]), edges=tuple(float(e) for e in data.get("edges", ())),
                   fractions=tuple(float(f) for f in data["fractions"]), categorical=bool(data.get("categorical")))


def build_reference(batches: Sequence[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]], task: str,
                    *, bins: int = 10, description: str = "") -> dict[str, Any]:
    """Reference distributions from (inputs, outputs) batches: the manifest's ``reference`` field.

    Continuous features get ``bins`` equal-mass bins (deciles by default; ties merge bins); the
    predicted class gets one bin per class (the output's width).
    """
    collected: dict[str, list[np.ndarray]] = {}
    classes: dict[str, int] = {}
    for inputs, outputs in batches:
        for role, tensors in (("input", inputs), ("output", outputs)):
            for name, values in summarise(tensors, role, task).items():
                collected.setdefault(name, []).append(values)
        if task == "classification":
            for name, value in outputs.items():
                classes[f"output:{name}:top1"] = int(np.asarray(value).reshape(np.asarray(value).shape[0], -1).shape[1])
    features = []
    samples = 0
    for name, parts in collected.items():
        values = np.concatenate(parts)
        samples = max(samples, values.size)
        if name in classes:
            counts = np.bincount(values.astype(np.int64), minlength=classes[name]).astype(np.float64)
            features.append(FeatureReference(name, (), tuple(counts / counts.sum()), categorical=True))
            continue
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)
        features.append(FeatureReference(name, tuple(float(e) for e in edges),
                                         tuple(float(c) for c in counts / counts.sum())))
    return {"samples": int(samples), "data": description, "bins": bins,
            "features": [f.to_dict() for f in features]}


def psi(reference: Sequence[float], live: Sequence[float]) -> float:
    """Population stability index of two fraction vectors over the same bins (empty bins floored)."""
    ref = np.maximum(np.asarray(reference, dtype=np.float64), _FLOOR)
    cur = np.maximum(np.asarray(live, dtype=np.float64), _FLOOR)
    ref, cur = ref / ref.sum(), cur / cur.sum()
    return float(np.sum((cur - ref) * np.log(cur / ref)))


@dataclass(frozen=True)
class DriftStatus:
    """PSI per feature over the live window, and whether any crossed the threshold."""

    samples: float
    psi: dict[str, float]
    threshold: float
    flagged: bool
    worst: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "psi": self.psi, "threshold": self.threshold, "flagged": self.flagged,
                "worst": self.worst}


class DriftMonitor:
    """Live histograms in the reference's bins; not thread-safe (one observer worker feeds it).

    ``window``: when the live count reaches it, every bin is halved, so the figures follow the
    recent stream (an exponential forgetting with half-life ~``window`` samples) instead of
    averaging the whole life of the app. No verdict before ``min_samples``.
    """

    def __init__(self, reference: Mapping[str, Any], task: str, *, threshold: float = 0.2,
                 min_samples: int = 200, window: int = 2000) -> None:
        self.task = task
        self.threshold = threshold
        self.min_samples = min_samples
        self.window = window
        self.features = [FeatureReference.from_dict(f) for f in reference.get("features", ())]
        self._counts = {f.name: np.zeros(len(f.fractions)) for f in self.features}
        self._samples = 0.0

    def update(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        values = {**summarise(inputs, "input", self.task), **summarise(outputs, "output", self.task)}
        n = 0
        for feature in self.features:
            found = values.get(feature.name)
            if found is None:
                continue
            counts = self._counts[feature.name]
            np.add.at(counts, feature.bin(found), 1.0)
            n = max(n, found.size)
        self._samples += n
        if self._samples >= self.window:
            for counts in self._counts.values():
                counts *= 0.5
            self._samples *= 0.5

    def status(self) -> DriftStatus:
        scores: dict[str, float] = {}
        if self._samples >= min(self.min_samples, self.window / 2):  # halving never hides a verdict again
            for feature in self.features:
                counts = self._counts[feature.name]
                if counts.sum() > 0:
                    scores[feature.name] = psi(feature.fractions, counts / counts.sum())
        worst = max(scores, key=scores.get) if scores else None
        flagged = bool(worst is not None and scores[worst] >= self.threshold)
        return DriftStatus(self._samples, scores, self.threshold, flagged, worst)
