"""Transfer data and teacher targets: everything checked and computed before the first epoch.

A mistake in the data (an empty file, a label column of the wrong length, a NaN) should cost
the user seconds, not a training run; so this module validates first, then runs the teacher
once over all transfer and held-out samples: the soft targets are fixed, cheap to reuse every
epoch and identical between a run and its resumption.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgewise.errors import ConversionError, DataError, EdgewiseError

SINGLE_INPUT = "input"  # the key a bare array gets; a bundle teacher maps it to its only input
PREFERRED_OUTPUTS = ("sentence_embedding", "logits")
TEACHER_BATCH = 256
HELDOUT_FRACTION = 0.1

Arrays = dict[str, np.ndarray]
TeacherLike = torch.nn.Module | str | Path


@dataclass
class Split:
    """Inputs, optional labels and the teacher's outputs for one part (transfer or held-out)."""

    arrays: Arrays
    labels: np.ndarray | None
    targets: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return len(next(iter(self.arrays.values())))


def as_arrays(data: Any, what: str) -> Arrays:
    """One array or a name -> array mapping, as an ordered dict (the student's argument order)."""
    if isinstance(data, np.ndarray):
        return {SINGLE_INPUT: data}
    if isinstance(data, Mapping):
        if not data:
            raise DataError(f"{what} is an empty mapping: no input arrays")
        arrays = {}
        for name, value in data.items():
            if not isinstance(value, np.ndarray):
                raise DataError(f"{what}[{name!r}] is a {type(value).__name__}, expected a numpy array")
            arrays[str(name)] = value
        return arrays
    raise DataError(f"{what} is a {type(data).__name__}; pass a numpy array or a dict of name -> numpy array")


def check_arrays(arrays: Arrays, what: str) -> int:
    """Sample count of ``arrays``; DataError when empty, mismatched or not finite."""
    counts = {name: (a.shape[0] if a.ndim else 0) for name, a in arrays.items()}
    if len(set(counts.values())) > 1:
        raise DataError(f"{what}: inputs have different sample counts {counts}",
                        hint="Every input array needs one row per sample (dimension 0).")
    n = next(iter(counts.values()))
    if n == 0:
        raise DataError(f"{what} holds no samples", hint="Distillation needs transfer inputs (labels are optional).")
    for name, array in arrays.items():
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).reshape(n, -1).any(axis=1).sum())
            where = what if name == SINGLE_INPUT else f"{what}[{name!r}]"
            raise DataError(f"{where} has NaN or infinite values in {bad} of {n} samples",
                            hint="Drop or impute those samples before distilling.")
    return n


def check_labels(labels: np.ndarray | None, n: int, what: str) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise DataError(f"{what}: {labels.shape[0] if labels.ndim else 0} labels (shape {labels.shape}) "
                        f"for {n} samples", hint="Pass one integer class index per sample.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{what} have dtype {labels.dtype}; class indices must be integers")
    return labels.astype(np.int64)


def split_heldout(part: Split, seed: int) -> tuple[Split, Split]:
    """Seeded 10 % held-out split, so early stopping never scores on samples it trained on."""
    n = part.size
    if n < 2:
        raise DataError(f"transfer data has {n} sample; need at least 2 to split off held-out data",
                        hint="Pass more transfer samples, or pass heldout= explicitly.")
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, round(n * HELDOUT_FRACTION))
    return take(part, order[cut:]), take(part, order[:cut])


def take(part: Split, index: np.ndarray) -> Split:
    labels = part.labels[index] if part.labels is not None else None
    return Split({k: v[index] for k, v in part.arrays.items()}, labels)


def to_tensors(arrays: Arrays) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays.values()]


def pick_output(out: Any) -> torch.Tensor | np.ndarray:
    """The tensor to distil from a model's output: a tensor, a dict's preferred key, or the first element."""
    if isinstance(out, torch.Tensor | np.ndarray):
        return out
    if isinstance(out, Mapping):
        for key in PREFERRED_OUTPUTS:
            if key in out:
                return out[key]
        out = list(out.values())
    if isinstance(out, list | tuple) and out:
        return pick_output(out[0])
    raise ConversionError(f"model returned {type(out).__name__}; expected a tensor, a dict or a tuple of tensors")


def run_teacher(teacher: TeacherLike, parts: list[Split], bare: bool,
                progress: Callable[[str], None] | None) -> int | None:
    """Fill ``part.targets`` for every part (float32); return the teacher's parameter count if known."""
    start = time.perf_counter()
    if isinstance(teacher, torch.nn.Module):
        run, params = _torch_runner(teacher), sum(p.numel() for p in teacher.parameters())
    elif isinstance(teacher, str | Path):
        run, params = _bundle_runner(Path(teacher), bare)
    else:
        raise ConversionError(f"teacher is a {type(teacher).__name__}; pass a torch.nn.Module, "
                              "an edgewise bundle directory or an .onnx file")
    for part in parts:
        outputs = [run({k: v[i:i + TEACHER_BATCH] for k, v in part.arrays.items()})
                   for i in range(0, part.size, TEACHER_BATCH)]
        part.targets = torch.cat(outputs).float()
    if progress:
        total = sum(p.size for p in parts)
        progress(f"teacher outputs {list(parts[0].targets.shape[1:])} per sample on {total} samples, "
                 f"{time.perf_counter() - start:.1f} s")
    return params


def _torch_runner(teacher: torch.nn.Module) -> Callable[[Arrays], torch.Tensor]:
    teacher.eval()

    def run(batch: Arrays) -> torch.Tensor:
        try:
            with torch.no_grad():
                out = pick_output(teacher(*to_tensors(batch)))
        except EdgewiseError:
            raise
        except Exception as exc:
            raise ConversionError(f"the teacher failed on the transfer data: {type(exc).__name__}: {exc}",
                                  hint="Transfer inputs must be what the teacher's forward() takes.") from exc
        return torch.as_tensor(out).detach().cpu()

    return run


def _bundle_runner(path: Path, bare: bool) -> tuple[Callable[[Arrays], torch.Tensor], int | None]:
    """Run a bundle or model file with device_runtime (CPU: the same targets on every machine)."""
    from edgewise import device_runtime

    model = device_runtime.load(path, device="cpu")
    names = [spec.name for spec in model.signature.inputs]

    def run(batch: Arrays) -> torch.Tensor:
        if bare and len(names) == 1:
            batch = {names[0]: batch[SINGLE_INPUT]}
        missing = [n for n in names if n not in batch]
        if missing:
            raise DataError(f"the teacher {path.name} needs input(s) {missing}; transfer data has {list(batch)}",
                            hint="Pass transfer data as a dict keyed by the model's input names.")
        try:
            outputs = model.run({n: batch[n] for n in names})
        except EdgewiseError as exc:
            raise DataError(f"the teacher {path.name} refused the transfer data: {exc.message}",
                            hint=exc.hint or None) from exc
        return torch.from_numpy(np.asarray(pick_output(outputs)))

    return run, _onnx_param_count(model.path)


def _onnx_param_count(path: Path) -> int | None:
    """Sum of ONNX initializer sizes: the teacher's parameter count, for the compression ratio."""
    if path.suffix.lower() != ".onnx":
        return None
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        return int(sum(int(np.prod(init.dims)) for init in graph.initializer))
    except Exception:  # a count for the report only: never worth failing a run
        return None
