"""``student_preset``: a smaller student read off the teacher's own structure.

Three shapes of teacher are recognised, because for each there is a known-good way to shrink:

* MLP (a chain of ``nn.Linear``): fewer and narrower hidden layers. The student is a new
  ``nn.Sequential`` (Flatten if the teacher flattens, Linear/activation pairs, output Linear).
* CNN (``nn.Conv2d`` stack + linear head, like ``DigitsCNN``): a copy of the teacher with every
  conv's channels and every hidden Linear's width scaled, so the teacher's ``forward`` still applies.
* BERT-like Hugging Face encoder (``.config.num_hidden_layers`` and ``.encoder.layer``): a copy
  keeping every (n/k)-th transformer layer, starting with layer 0 (DistilBERT's recipe), with
  the embeddings and the kept layers' weights taken from the teacher — a far better start
  than random weights for a model that learned language from a large corpus.

Anything else raises, because guessing a student for an unknown architecture fails silently.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from edgewise.errors import ConversionError

_MLP_EXTRAS = (nn.Flatten, nn.Dropout, nn.Identity)
_CNN_EXTRAS = (*_MLP_EXTRAS, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.BatchNorm2d)


def student_preset(teacher: nn.Module, *, width: float = 0.25, depth: float = 0.5, seed: int = 0) -> nn.Module:
    """A student for ``teacher``: hidden widths × ``width``, hidden layer count × ``depth`` (at least 1).

    ``depth`` applies to MLPs and transformer encoders, ``width`` to MLPs and CNNs (an encoder
    keeps its hidden size, so its kept layers can be copied from the teacher). New weights are
    initialised under ``seed`` so the same call builds the same student in any process.
    """
    if not (0 < width <= 1 and 0 < depth <= 1):
        raise ConversionError(f"student_preset: width={width}, depth={depth}; both must be in (0, 1]")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = _find_encoder(teacher)
        if encoder is not None:
            return _encoder_student(teacher, depth)
        leaves = [m for m in teacher.modules() if not list(m.children())]
        if any(isinstance(m, nn.Conv2d) for m in leaves):
            return _cnn_student(teacher, leaves, width)
        if leaves and all(isinstance(m, nn.Linear) or _is_activation(m) or isinstance(m, _MLP_EXTRAS)
                          for m in leaves):
            return _mlp_student(leaves, width, depth)
    raise ConversionError(
        f"no student preset for a {type(teacher).__name__}: presets cover MLPs (chains of nn.Linear), "
        "Conv2d stacks with a linear head, and BERT-like Hugging Face encoders",
        hint="Build a smaller student module yourself and pass it to distill(); its outputs must match the teacher's.",
    )


def _scaled(size: int, factor: float) -> int:
    return max(1, round(size * factor))


def _is_activation(module: nn.Module) -> bool:
    return type(module).__module__ == nn.modules.activation.__name__


def _linear_chain(linears: list[nn.Linear], what: str) -> None:
    for prev, nxt in itertools.pairwise(linears):
        if prev.out_features != nxt.in_features:
            raise ConversionError(
                f"{what}: the Linear layers do not form a chain ({prev.out_features} outputs feed "
                f"{nxt.in_features} inputs), so the preset cannot tell the layer order",
                hint="Pass your own student module to distill().",
            )


def _mlp_student(leaves: list[nn.Module], width: float, depth: float) -> nn.Module:
    """New Sequential: hidden widths sampled evenly from the teacher's, each scaled by ``width``."""
    linears = [m for m in leaves if isinstance(m, nn.Linear)]
    _linear_chain(linears, "MLP preset")
    if len(linears) < 2:
        raise ConversionError("MLP preset: the teacher has a single Linear layer; nothing to shrink",
                              hint="A linear model is already as small as its input and output sizes allow.")
    hidden = [m.out_features for m in linears[:-1]]
    keep = max(1, round(len(hidden) * depth))
    widths = [_scaled(hidden[round(i * len(hidden) / keep)], width) for i in range(keep)]
    activation = next((m for m in leaves if _is_activation(m)), nn.ReLU())
    layers: list[nn.Module] = [nn.Flatten()] if any(isinstance(m, nn.Flatten) for m in leaves) else []
    size = linears[0].in_features
    for w in widths:
        layers += [nn.Linear(size, w), copy.deepcopy(activation)]
        size = w
    layers.append(nn.Linear(size, linears[-1].out_features))
    return nn.Sequential(*layers)


def _cnn_student(teacher: nn.Module, leaves: list[nn.Module], width: float) -> nn.Module:
    """Copy of the teacher with resized Conv2d/BatchNorm2d/Linear modules, in registration order."""
    for m in leaves:
        if not (isinstance(m, nn.Conv2d | nn.Linear) or _is_activation(m) or isinstance(m, _CNN_EXTRAS)):
            raise ConversionError(f"CNN preset: cannot resize a {type(m).__name__} layer",
                                  hint="Pass your own student module to distill().")
    student = copy.deepcopy(teacher)
    names = [name for name, m in student.named_modules() if not list(m.children())]
    last_linear = max(i for i, name in enumerate(names) if isinstance(student.get_submodule(name), nn.Linear))
    channels: tuple[int, int] | None = None  # (teacher, student) channels flowing at this point
    features: int | None = None  # student width of the previous Linear
    for i, name in enumerate(names):
        old = student.get_submodule(name)
        if isinstance(old, nn.Conv2d):
            new = _resized_conv(old, channels, width)
            channels = (old.out_channels, new.out_channels)
        elif isinstance(old, nn.BatchNorm2d) and channels is not None:
            new = nn.BatchNorm2d(channels[1], eps=old.eps, momentum=old.momentum, affine=old.affine)
        elif isinstance(old, nn.Linear):
            new = _resized_linear(old, channels, features, width, is_output=i == last_linear)
            channels, features = None, new.out_features
        else:
            continue
        student.set_submodule(name, new)
    return student


def _resized_conv(old: nn.Conv2d, channels: tuple[int, int] | None, width: float) -> nn.Conv2d:
    if old.groups != 1:
        raise ConversionError("CNN preset: grouped/depthwise convolutions are not resized",
                              hint="Pass your own student module to distill().")
    in_ch = old.in_channels if channels is None else channels[1]
    return nn.Conv2d(in_ch, _scaled(old.out_channels, width), old.kernel_size, old.stride, old.padding,
                     old.dilation, bias=old.bias is not None, padding_mode=old.padding_mode)


def _resized_linear(old: nn.Linear, channels: tuple[int, int] | None, features: int | None, width: float,
                    *, is_output: bool) -> nn.Linear:
    if features is not None:
        in_features = features
    elif channels is not None:  # first Linear after the convs: flattened channels x spatial positions
        teacher_ch, student_ch = channels
        if old.in_features % teacher_ch:
            raise ConversionError(f"CNN preset: Linear({old.in_features}, ...) does not read {teacher_ch} "
                                  "flattened channels", hint="Pass your own student module to distill().")
        in_features = old.in_features // teacher_ch * student_ch
    else:
        in_features = old.in_features
    out_features = old.out_features if is_output else _scaled(old.out_features, width)
    return nn.Linear(in_features, out_features, bias=old.bias is not None)


def _find_encoder(teacher: nn.Module) -> nn.Module | None:
    """The BERT-like encoder model inside ``teacher`` (itself or its HF ``base_model``), if any."""
    for candidate in (teacher, getattr(teacher, "base_model", None)):
        config = getattr(candidate, "config", None)
        layers = getattr(getattr(candidate, "encoder", None), "layer", None)
        if hasattr(config, "num_hidden_layers") and isinstance(layers, nn.ModuleList):
            return candidate
    return None


def _encoder_student(teacher: nn.Module, depth: float) -> nn.Module:
    student = copy.deepcopy(teacher)
    encoder = _find_encoder(student)
    layers = encoder.encoder.layer
    n = len(layers)
    keep = max(1, round(n * depth))
    chosen = [round(i * n / keep) for i in range(keep)]  # n=4, keep=2 -> layers 0 and 2
    encoder.encoder.layer = nn.ModuleList(layers[i] for i in chosen)
    for new_index, layer in enumerate(encoder.encoder.layer):
        for module in layer.modules():  # HF attention modules index the KV cache by layer_idx
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    encoder.config.num_hidden_layers = keep
    if getattr(student, "config", None) is not None:
        student.config.num_hidden_layers = keep
    student.distilled_from_layers = tuple(chosen)
    return student
