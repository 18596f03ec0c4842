"""``distill``: validate everything, compute teacher targets once, then train with early stopping.

Determinism on CPU comes from three seeded sources (the split, a ``torch.Generator`` for the
batch order, the global torch RNG for dropout) run under ``fork_rng``, so the caller's RNG
state is untouched; the checkpoint stores all of them, so a resumed run reproduces a straight one.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgewise.converters._distill._config import DistillConfig, DistillResult
from edgewise.converters._distill._data import (
    SINGLE_INPUT,
    Split,
    TeacherLike,
    as_arrays,
    check_arrays,
    check_labels,
    pick_output,
    run_teacher,
    split_heldout,
    to_tensors,
)
from edgewise.errors import ConversionError, DataError

Progress = Callable[[str], None]
EVAL_BATCH = 512


def distill(
    teacher: TeacherLike, student: torch.nn.Module, transfer: np.ndarray | Mapping[str, np.ndarray], *,
    labels: np.ndarray | None = None, heldout: np.ndarray | Mapping[str, np.ndarray] | None = None,
    heldout_labels: np.ndarray | None = None, config: DistillConfig = DistillConfig(),  # noqa: B008 (frozen)
    progress: Progress | None = None,
) -> DistillResult:
    """Train ``student`` (in place) to reproduce ``teacher`` on ``transfer`` inputs; labels are optional.

    ``teacher`` is a torch module or an edgewise bundle / .onnx file (run with device_runtime,
    so a teacher you only have as a shipped artifact still works). ``transfer`` is one array or
    a dict of named arrays; the student is called as ``student(*arrays)`` in dict order. Every
    check (data, labels, student forward, output shapes) runs before the first epoch.
    A torch teacher is switched to eval mode (its dropout off) before its outputs are computed.
    """
    train, held, bare = _prepare_data(transfer, labels, heldout, heldout_labels, config)
    teacher_params = run_teacher(teacher, [train, held], bare, progress)
    _check_student(student, train, held, config)
    with _deterministic(config.seed):
        state = _TrainState.start(student, config, progress)
        _train(student, train, held, config, state, progress)
        student.load_state_dict(state.best_state)
    student.eval()
    teacher_accuracy = _accuracy(held.targets, held.labels) if config.task == "classification" else None
    return DistillResult(
        student=student, teacher_params=teacher_params, student_params=sum(p.numel() for p in student.parameters()),
        heldout_agreement=state.best_score, heldout_accuracy=state.best_accuracy,
        teacher_heldout_accuracy=teacher_accuracy, epochs_run=state.epoch, best_epoch=state.best_epoch,
        stopped_early=state.stopped_early, resumed_from_epoch=state.resumed_from, history=state.history,
    )


def _prepare_data(transfer, labels, heldout, heldout_labels, config: DistillConfig) -> tuple[Split, Split, bool]:
    arrays = as_arrays(transfer, "transfer data")
    n = check_arrays(arrays, "transfer data")
    if config.task != "classification" and (labels is not None or heldout_labels is not None):
        raise DataError(f"labels were given for task={config.task!r}; hard labels apply only to classification")
    train = Split(arrays, check_labels(labels, n, "transfer labels"))
    if heldout is None:
        if heldout_labels is not None:
            raise DataError("heldout_labels were given without heldout data")
        train, held = split_heldout(train, config.seed)
    else:
        held_arrays = as_arrays(heldout, "held-out data")
        if list(held_arrays) != list(arrays):
            raise DataError(f"held-out inputs {list(held_arrays)} differ from transfer inputs {list(arrays)}")
        for name, array in held_arrays.items():
            if array.shape[1:] != arrays[name].shape[1:] or array.dtype != arrays[name].dtype:
                raise DataError(f"held-out {name!r} is {array.dtype}{list(array.shape)}, transfer is "
                                f"{arrays[name].dtype}{list(arrays[name].shape)}: they must match beyond dimension 0")
        m = check_arrays(held_arrays, "held-out data")
        held = Split(held_arrays, check_labels(heldout_labels, m, "held-out labels"))
    return train, held, isinstance(transfer, np.ndarray) and list(arrays) == [SINGLE_INPUT]


def _check_student(student: torch.nn.Module, train: Split, held: Split, config: DistillConfig) -> None:
    """Run the student on two samples and compare with the teacher's outputs, before any training."""
    probe = [t[:2] for t in to_tensors(train.arrays)]
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            out = pick_output(student(*probe))
    except Exception as exc:
        raise ConversionError(
            f"the student failed on a probe batch of {len(probe[0])} transfer samples: {type(exc).__name__}: {exc}",
            hint="The student must take the transfer inputs (as positional arguments, in dict order).",
        ) from exc
    finally:
        student.train(was_training)
    want = tuple(train.targets.shape[1:])
    if not isinstance(out, torch.Tensor) or tuple(out.shape[1:]) != want:
        got = tuple(out.shape[1:]) if hasattr(out, "shape") else type(out).__name__
        raise ConversionError(f"student output per sample is {got}, the teacher's is {want}: incompatible outputs",
                              hint="Give the student the teacher's output size (e.g. the same number of classes).")
    if config.task == "classification":
        if len(want) != 1:
            raise ConversionError(f"task='classification' needs [batch, classes] logits; the teacher gives "
                                  f"{tuple(train.targets.shape)}", hint="Use task='embedding' for other outputs.")
        for what, labels in (("transfer", train.labels), ("held-out", held.labels)):
            if labels is not None and (labels.min() < 0 or labels.max() >= want[0]):
                raise DataError(f"{what} labels span {labels.min()}..{labels.max()}, the model has {want[0]} classes")


@contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seeded, deterministic kernels for the run; the caller's RNG and determinism settings come back after."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@dataclass
class _TrainState:
    """Everything that must survive a restart, and nothing else."""

    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    epoch: int = 0
    best_score: float = float("-inf")
    best_accuracy: float | None = None
    best_epoch: int = 0
    best_state: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    resumed_from: int | None = None
    stopped_early: bool = False

    @classmethod
    def start(cls, student: torch.nn.Module, config: DistillConfig, progress: Progress | None) -> _TrainState:
        optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        state = cls(optimizer, torch.Generator().manual_seed(config.seed))
        state.best_state = copy.deepcopy(student.state_dict())
        if config.checkpoint is not None and config.checkpoint.exists():
            state._resume(student, config)
            if progress:
                progress(f"resumed from {config.checkpoint.name} after epoch {state.epoch}")
        return state

    def _resume(self, student: torch.nn.Module, config: DistillConfig) -> None:
        path = config.checkpoint
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved["config"] != config.fingerprint():
                raise ConversionError(f"checkpoint {path} was written with other settings {saved['config']}",
                                      hint="Delete the checkpoint, or resume with the settings that wrote it.")
            student.load_state_dict(saved["student"])
            self.optimizer.load_state_dict(saved["optimizer"])
        except ConversionError:
            raise
        except Exception as exc:
            raise ConversionError(f"cannot resume from checkpoint {path}: {type(exc).__name__}: {exc}",
                                  hint="It belongs to another student or is damaged; delete it to start over.") from exc
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        self.epoch = self.resumed_from = saved["epoch"]
        self.best_score, self.best_accuracy = saved["best_score"], saved["best_accuracy"]
        self.best_epoch, self.best_state, self.history = saved["best_epoch"], saved["best_state"], saved["history"]

    def save(self, student: torch.nn.Module, config: DistillConfig) -> None:
        """Write atomically (temp file + rename): a kill mid-write leaves the previous checkpoint intact."""
        path: Path = config.checkpoint
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({
            "config": config.fingerprint(), "student": student.state_dict(),
            "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "epoch": self.epoch, "best_score": self.best_score,
            "best_accuracy": self.best_accuracy, "best_epoch": self.best_epoch, "best_state": self.best_state,
            "history": self.history,
        }, tmp)
        os.replace(tmp, path)


def _train(student: torch.nn.Module, train: Split, held: Split, config: DistillConfig, state: _TrainState,
           progress: Progress | None) -> None:
    inputs, held_inputs = to_tensors(train.arrays), to_tensors(held.arrays)
    labels = torch.from_numpy(train.labels) if train.labels is not None else None
    while state.epoch < config.epochs:
        if state.epoch - state.best_epoch >= config.patience:
            state.stopped_early = True
            break
        start = time.perf_counter()
        loss = _train_epoch(student, inputs, train.targets, labels, config, state)
        score, accuracy = _score(student, held_inputs, held.targets, held.labels, config)
        state.epoch += 1
        best = score > state.best_score
        if best:
            state.best_score, state.best_accuracy, state.best_epoch = score, accuracy, state.epoch
            state.best_state = copy.deepcopy(student.state_dict())
        seconds = time.perf_counter() - start
        state.history.append({"epoch": state.epoch, "loss": loss, "heldout_agreement": score, "seconds": seconds})
        if config.checkpoint is not None:
            state.save(student, config)
        if progress:
            metric = f"agreement {100 * score:.1f} %" if config.task == "classification" else f"cosine {score:.4f}"
            progress(f"epoch {state.epoch}/{config.epochs}: loss {loss:.4g}, held-out {metric}"
                     f"{' (best)' if best else ''}, {seconds:.1f} s")


def _train_epoch(student: torch.nn.Module, inputs: list[torch.Tensor], targets: torch.Tensor,
                 labels: torch.Tensor | None, config: DistillConfig, state: _TrainState) -> float:
    student.train()
    order = torch.randperm(len(targets), generator=state.generator)
    total = 0.0
    for begin in range(0, len(order), config.batch_size):
        idx = order[begin:begin + config.batch_size]
        out = pick_output(student(*(t[idx] for t in inputs)))
        loss = _loss(out, targets[idx], labels[idx] if labels is not None else None, config)
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        total += loss.item() * len(idx)
    return total / len(order)


def _loss(out: torch.Tensor, target: torch.Tensor, labels: torch.Tensor | None, config: DistillConfig) -> torch.Tensor:
    if config.task == "embedding":
        if config.embedding_loss == "mse":
            return F.mse_loss(out, target)
        return (1 - F.cosine_similarity(out, target, dim=-1)).mean()
    t = config.temperature
    soft = F.kl_div(F.log_softmax(out / t, dim=-1), F.log_softmax(target / t, dim=-1),
                    reduction="batchmean", log_target=True) * t * t
    if labels is None:
        return soft
    return config.alpha * soft + (1 - config.alpha) * F.cross_entropy(out, labels)


def _score(student: torch.nn.Module, inputs: list[torch.Tensor], targets: torch.Tensor, labels: np.ndarray | None,
           config: DistillConfig) -> tuple[float, float | None]:
    """Held-out agreement (top-1 match, or mean cosine for embeddings) and accuracy when labels exist."""
    student.eval()
    with torch.no_grad():
        out = torch.cat([pick_output(student(*(t[i:i + EVAL_BATCH] for t in inputs)))
                         for i in range(0, len(targets), EVAL_BATCH)])
    if config.task == "embedding":
        return F.cosine_similarity(out, targets, dim=-1).mean().item(), None
    agreement = (out.argmax(-1) == targets.argmax(-1)).float().mean().item()
    return agreement, _accuracy(out, labels)


def _accuracy(logits: torch.Tensor, labels: np.ndarray | None) -> float | None:
    if labels is None:
        return None
    return (logits.argmax(-1) == torch.from_numpy(labels)).float().mean().item()
