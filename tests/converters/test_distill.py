"""Distillation on real data (scikit-learn digits) with tiny models: each run takes well under a second."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from edgewise.converters.distill import DistillConfig, distill, student_preset  # noqa: E402
from edgewise.demo.models import DigitsCNN, DigitsMLP, train_classifier  # noqa: E402
from edgewise.errors import ConversionError, DataError  # noqa: E402

FAST = DistillConfig(epochs=20, lr=3e-3)


@pytest.fixture(scope="module")
def teacher(digits_split) -> nn.Module:
    torch.manual_seed(0)
    model = DigitsMLP(side=8, hidden=256)
    return train_classifier(model, digits_split.train_x, digits_split.train_y, epochs=10, log=lambda _: None)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _epoch_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("epoch ")]


def _accuracy(module: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((module(torch.from_numpy(x)).argmax(-1).numpy() == y).mean())


# --- presets -----------------------------------------------------------------------------------


def test_mlp_preset_is_at_least_5x_smaller_with_same_interface(teacher, digits_split):
    student = student_preset(teacher)
    assert _params(teacher) / _params(student) >= 5
    linears = [m for m in student.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2  # 2 hidden layers * depth 0.5 -> 1 hidden layer
    assert (linears[0].in_features, linears[0].out_features, linears[-1].out_features) == (64, 64, 10)
    assert student(torch.from_numpy(digits_split.test_x[:3])).shape == (3, 10)


def test_preset_is_seeded():
    a, b = student_preset(DigitsMLP(side=8)), student_preset(DigitsMLP(side=8))
    assert _same_weights(a, b)
    assert not _same_weights(a, student_preset(DigitsMLP(side=8), seed=1))


def test_cnn_preset_scales_channels_and_hidden_and_runs(digits_split):
    teacher = DigitsCNN(side=8)
    student = student_preset(teacher, width=0.25)
    convs = [m for m in student.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 4), (4, 8)]
    assert [m.out_features for m in student.modules() if isinstance(m, nn.Linear)] == [32, 10]
    assert student(torch.from_numpy(digits_split.test_x[:5])).shape == (5, 10)
    assert _params(teacher) / _params(student) >= 5


def test_unknown_architecture_asks_for_a_student():
    with pytest.raises(ConversionError, match="pass it to distill"):
        student_preset(nn.LSTM(8, 8))


def _tiny_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.BertModel(config).eval()


def test_bert_preset_keeps_layers_0_and_2_and_the_embeddings():
    teacher = _tiny_bert()
    student = student_preset(teacher, depth=0.5)
    assert student.config.num_hidden_layers == 2 and len(student.encoder.layer) == 2
    assert teacher.config.num_hidden_layers == 4  # the teacher is not modified
    assert student.distilled_from_layers == (0, 2)
    for kept, source in zip(student.encoder.layer, (0, 2), strict=True):
        assert _same_weights(kept, teacher.encoder.layer[source])
    assert _same_weights(student.embeddings, teacher.embeddings)
    ids = torch.randint(0, 100, (2, 6))
    assert student(input_ids=ids).last_hidden_state.shape == (2, 6, 32)


class _Pooled(nn.Module):
    """Sentence vector = BERT's pooled output: what an embedding student is trained to reproduce."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def test_embedding_distillation_of_a_bert_encoder_reduces_cosine_loss():
    bert = _tiny_bert()
    teacher, student = _Pooled(bert), _Pooled(student_preset(bert, depth=0.5))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, size=(160, 12)).astype(np.int64)
    data = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    lines: list[str] = []
    config = DistillConfig(task="embedding", epochs=4, batch_size=32, lr=1e-3, patience=10)
    result = distill(teacher, student, data, config=config, progress=lines.append)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert 0.5 < result.heldout_agreement <= 1.0  # mean cosine with the teacher's vectors
    assert result.heldout_accuracy is None and result.teacher_heldout_accuracy is None
    assert "held-out cosine" in _epoch_lines(lines)[0]


# --- distillation ------------------------------------------------------------------------------


def test_distill_with_labels_matches_teacher(teacher, digits_split):
    s = digits_split
    lines: list[str] = []
    result = distill(teacher, student_preset(teacher), s.train_x, labels=s.train_y, heldout=s.test_x,
                     heldout_labels=s.test_y, config=FAST, progress=lines.append)
    assert result.heldout_agreement > 0.9
    assert result.teacher_heldout_accuracy == pytest.approx(_accuracy(teacher, s.test_x, s.test_y))
    assert result.heldout_accuracy > result.teacher_heldout_accuracy - 0.05
    assert result.heldout_accuracy == pytest.approx(_accuracy(result.student, s.test_x, s.test_y))
    assert result.teacher_params / result.student_params >= 5
    assert not result.student.training
    assert len(_epoch_lines(lines)) == result.epochs_run
    assert "held-out agreement" in _epoch_lines(lines)[0] and " %" in _epoch_lines(lines)[0]


def test_distill_without_labels_or_heldout(teacher, digits_split):
    """Unlabeled transfer data is enough; 10 % of it is split off (seeded) for early stopping."""
    s = digits_split
    result = distill(teacher, student_preset(teacher), s.train_x, config=FAST)
    assert result.heldout_agreement > 0.9
    assert result.heldout_accuracy is None and result.teacher_heldout_accuracy is None
    assert _accuracy(result.student, s.test_x, s.test_y) > _accuracy(teacher, s.test_x, s.test_y) - 0.06


def test_same_seed_same_student_and_caller_state_untouched(teacher, digits_split):
    x = digits_split.train_x[:400]
    config = DistillConfig(epochs=3)
    start = student_preset(teacher)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    deterministic = torch.are_deterministic_algorithms_enabled()
    a = distill(teacher, copy.deepcopy(start), x, config=config).student
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    b = distill(teacher, copy.deepcopy(start), x, config=config).student
    assert _same_weights(a, b)
    c = distill(teacher, copy.deepcopy(start), x, config=DistillConfig(epochs=3, seed=1)).student
    assert not _same_weights(a, c)


def test_resume_from_checkpoint_equals_a_straight_run(teacher, digits_split, tmp_path):
    x = digits_split.train_x[:600]
    start = student_preset(teacher)
    ckpt = tmp_path / "run" / "distill.ckpt"
    first = distill(teacher, copy.deepcopy(start), x, config=DistillConfig(epochs=3, patience=10, checkpoint=ckpt))
    assert ckpt.exists() and first.epochs_run == 3 and first.resumed_from_epoch is None
    lines: list[str] = []
    resumed = distill(teacher, copy.deepcopy(start), x, progress=lines.append,
                      config=DistillConfig(epochs=6, patience=10, checkpoint=ckpt))
    assert resumed.resumed_from_epoch == 3 and resumed.epochs_run == 6
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]
    assert resumed.history[:3] == first.history
    assert any(line.startswith("resumed from") for line in lines)
    assert [line.split(":")[0] for line in _epoch_lines(lines)] == ["epoch 4/6", "epoch 5/6", "epoch 6/6"]
    straight = distill(teacher, copy.deepcopy(start), x, config=DistillConfig(epochs=6, patience=10))
    assert _same_weights(resumed.student, straight.student)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]


def test_checkpoint_from_other_settings_is_refused(teacher, digits_split, tmp_path):
    x, ckpt = digits_split.train_x[:200], tmp_path / "distill.ckpt"
    distill(teacher, student_preset(teacher), x, config=DistillConfig(epochs=1, checkpoint=ckpt))
    with pytest.raises(ConversionError, match="other settings"):
        distill(teacher, student_preset(teacher), x, config=DistillConfig(epochs=2, lr=0.1, checkpoint=ckpt))
    with pytest.raises(ConversionError, match="cannot resume"):
        distill(teacher, student_preset(teacher, width=0.5), x, config=DistillConfig(epochs=2, checkpoint=ckpt))


def test_early_stopping_when_heldout_agreement_stops_improving(teacher, digits_split):
    # A learning rate this small cannot change a single prediction: epoch 1 stays the best.
    config = DistillConfig(epochs=30, patience=1, lr=1e-9)
    result = distill(teacher, student_preset(teacher), digits_split.train_x[:200], config=config)
    assert result.stopped_early
    assert result.best_epoch == 1 and result.epochs_run == 2 and len(result.history) == 2


def test_teacher_as_onnx_file(teacher, digits_split, tmp_path):
    from edgewise.converters._torch_export import export_torch_to_onnx

    s = digits_split
    path = export_torch_to_onnx(teacher, [s.train_x[:2]], tmp_path / "teacher.onnx",
                                input_names=["pixels"], output_names=["logits"])
    result = distill(path, student_preset(teacher), s.train_x, heldout=s.test_x, heldout_labels=s.test_y,
                     config=FAST)
    assert result.teacher_params == _params(teacher)
    assert result.heldout_agreement > 0.9
    assert result.teacher_heldout_accuracy == pytest.approx(_accuracy(teacher, s.test_x, s.test_y), abs=0.01)
    with pytest.raises(DataError, match="needs input"):
        distill(str(path), student_preset(teacher), {"image": s.train_x}, config=FAST)


# --- bad input: clear errors before the first epoch ---------------------------------------------


class _TwoInputs(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.flatten(1)[:, :10] + b.flatten(1)[:, :10]


def _bad_cases(x: np.ndarray, y: np.ndarray, teacher: nn.Module) -> dict:
    nan = x[:50].copy()
    nan[7, 0, 3, 3] = np.nan
    return {
        "empty transfer": (DataError, "no samples", dict(transfer=x[:0])),
        "empty mapping": (DataError, "empty mapping", dict(transfer={})),
        "mismatched inputs": (DataError, "different sample counts",
                              dict(transfer={"a": x[:10], "b": x[:9]}, teacher=_TwoInputs(), student=_TwoInputs())),
        "labels length": (DataError, "49 labels", dict(transfer=x[:50], labels=y[:49])),
        "labels range": (DataError, "classes", dict(transfer=x[:50], labels=y[:50] + 10)),
        "heldout inputs": (DataError, "held-out", dict(transfer=x[:50], heldout=x[:20, :, :4])),
        "non-finite": (DataError, "NaN", dict(transfer=nan)),
        "student fails": (ConversionError, "student failed on a probe batch",
                          dict(transfer=x[:50], student=nn.Linear(10, 10))),
        "10 vs 5 classes": (ConversionError, r"\(5,\), the teacher's is \(10,\)",
                            dict(transfer=x[:50], student=nn.Sequential(nn.Flatten(), nn.Linear(64, 5)))),
        "non-2D classification": (ConversionError, "classes",
                                  dict(transfer=x[:50], teacher=nn.Conv2d(1, 2, 1), student=nn.Conv2d(1, 2, 1))),
        "labels for embeddings": (DataError, "only to classification",
                                  dict(transfer=x[:50], labels=y[:50], config=DistillConfig(task="embedding"))),
    }


@pytest.mark.parametrize("case", [
    "empty transfer", "empty mapping", "mismatched inputs", "labels length", "labels range", "heldout inputs",
    "non-finite", "student fails", "10 vs 5 classes", "non-2D classification", "labels for embeddings",
])
def test_bad_input_raises_before_training(case, teacher, digits_split):
    error, message, kwargs = _bad_cases(digits_split.train_x, digits_split.train_y, teacher)[case]
    kwargs = {"teacher": teacher, "student": student_preset(teacher), **kwargs}
    student = kwargs["student"]
    before = copy.deepcopy(student.state_dict())
    lines: list[str] = []
    with pytest.raises(error, match=message):
        distill(kwargs.pop("teacher"), kwargs.pop("student"), kwargs.pop("transfer"), progress=lines.append, **kwargs)
    assert _epoch_lines(lines) == []
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


@pytest.mark.parametrize("bad", [dict(task="regression"), dict(alpha=1.5), dict(temperature=0), dict(epochs=0)])
def test_invalid_config(bad):
    with pytest.raises(ConversionError, match="invalid DistillConfig"):
        DistillConfig(**bad)
