"""The knobs of a distillation run and what it hands back: plain data, checked when built."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgewise.errors import ConversionError

TASKS = ("classification", "embedding")
EMBEDDING_LOSSES = ("cosine", "mse")


@dataclass(frozen=True)
class DistillConfig:
    """How to train the student.

    ``classification``: KL divergence between temperature-softened teacher and student
    distributions (scaled by T², so its gradients stay comparable to cross-entropy as T
    changes), mixed with cross-entropy on hard labels when labels are given:
    ``alpha * soft + (1 - alpha) * hard``. ``embedding``: the student regresses the teacher's
    vectors with ``1 - cosine`` (direction is what retrieval uses) or MSE.

    ``checkpoint`` is written after every epoch and resumed from when it exists, so a long run
    killed half-way continues where it stopped, bit for bit on CPU.
    """

    task: str = "classification"
    temperature: float = 4.0
    alpha: float = 0.7
    embedding_loss: str = "cosine"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    patience: int = 4
    seed: int = 0
    checkpoint: Path | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.task not in TASKS:
            problems.append(f"task={self.task!r} (use one of {TASKS})")
        if self.embedding_loss not in EMBEDDING_LOSSES:
            problems.append(f"embedding_loss={self.embedding_loss!r} (use one of {EMBEDDING_LOSSES})")
        if not self.temperature > 0:
            problems.append(f"temperature={self.temperature} (must be > 0)")
        if not 0.0 <= self.alpha <= 1.0:
            problems.append(f"alpha={self.alpha} (must be within [0, 1])")
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (must be >= 1)")
        if not self.lr > 0 or self.weight_decay < 0:
            problems.append(f"lr={self.lr}, weight_decay={self.weight_decay} (lr > 0, weight_decay >= 0)")
        if problems:
            raise ConversionError("invalid DistillConfig: " + "; ".join(problems))
        if self.checkpoint is not None and not isinstance(self.checkpoint, Path):
            object.__setattr__(self, "checkpoint", Path(self.checkpoint))

    def fingerprint(self) -> dict:
        """Settings a checkpoint must share with the run resuming it (epochs and patience may grow)."""
        return {"task": self.task, "temperature": self.temperature, "alpha": self.alpha,
                "embedding_loss": self.embedding_loss, "batch_size": self.batch_size, "lr": self.lr,
                "weight_decay": self.weight_decay, "seed": self.seed}


@dataclass
class DistillResult:
    """The trained student (best held-out state, eval mode) and the numbers to decide whether to ship it.

    ``heldout_agreement`` is top-1 agreement with the teacher for classification, mean cosine
    similarity for embeddings. ``history`` has one dict per epoch: epoch, loss,
    heldout_agreement, seconds.
    """

    student: torch.nn.Module
    teacher_params: int | None
    student_params: int
    heldout_agreement: float
    heldout_accuracy: float | None
    teacher_heldout_accuracy: float | None
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    resumed_from_epoch: int | None
    history: list[dict] = field(default_factory=list)

    @property
    def compression(self) -> float | None:
        """Teacher parameters per student parameter (None when the teacher's count is unknown)."""
        return self.teacher_params / self.student_params if self.teacher_params and self.student_params else None
