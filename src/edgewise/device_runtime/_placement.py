"""Which accelerator to try first: a pure decision over plain data.

Backends report what this machine offers (``Accelerator`` rows); ``rank`` turns the
caller's request into an ordered list of candidates. Trying them (and falling back when
one fails) is the I/O shell's job in ``_load.py``; keeping the decision here lets it be
tested for every request/hardware combination without owning the hardware.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgewise.errors import PlacementError

# Preference of device kinds when the caller says "auto": dedicated NPUs first (lowest
# energy per inference on phones/boards), then GPUs, then the CPU, which always works.
KIND_ORDER = ("npu", "gpu", "cpu")
DEVICE_REQUESTS = ("auto", *KIND_ORDER)


@dataclass(frozen=True)
class Accelerator:
    """One way a backend can run a model here: an ORT execution provider, a LiteRT delegate, ...

    ``auto`` is False for accelerators that work but are not a good default on this
    kind of machine (e.g. XNNPACK inside onnxruntime on x86); they run only when asked by name.
    """

    backend: str
    name: str  # engine's own name, e.g. "CUDAExecutionProvider"
    kind: str  # "npu" | "gpu" | "cpu"
    alias: str  # short name a user can type, e.g. "cuda"
    auto: bool = True
    detail: str = ""


@dataclass(frozen=True)
class Attempt:
    """A candidate that was tried and not used, with the reason (shown to the user)."""

    accelerator: str
    reason: str


@dataclass(frozen=True)
class Placement:
    """Where a model actually runs, what was asked for, and every fallback on the way."""

    backend: str
    accelerator: str
    device: str  # kind of the accelerator that runs it
    requested: str
    fallbacks: tuple[Attempt, ...] = ()

    @property
    def fell_back(self) -> bool:
        return bool(self.fallbacks)

    def describe(self) -> str:
        text = f"{self.backend} on {self.device} ({self.accelerator})"
        if self.fallbacks:
            tried = "; ".join(f"{a.accelerator}: {a.reason}" for a in self.fallbacks)
            text += f" after falling back from [{tried}]"
        return text


def rank(available: Sequence[Accelerator], requested: str, *, strict: bool = False) -> list[Accelerator]:
    """Order the accelerators to try for ``requested``.

    ``requested`` is "auto", a kind ("npu", "gpu", "cpu"), or an accelerator's name or alias
    ("cuda", "CUDAExecutionProvider"). Unless ``strict``, the CPU is appended as the last
    resort so that a failing accelerator never leaves the caller without a model. With
    ``strict``, only what was asked for is returned (for "auto", strict changes nothing).
    """
    req = requested.strip()
    key = req.lower()
    cpu = [a for a in available if a.kind == "cpu" and a.auto]

    if key == "auto":
        chosen = sorted((a for a in available if a.auto), key=lambda a: KIND_ORDER.index(a.kind))
        return _dedupe(chosen)
    if key in KIND_ORDER:
        chosen = [a for a in available if a.kind == key and a.auto] or [a for a in available if a.kind == key]
        if not chosen and strict:
            raise PlacementError(
                f"no {key.upper()} accelerator is available here (found: {_names(available)})",
            )
    else:
        chosen = [a for a in available if key in (a.name.lower(), a.alias.lower())]
        if not chosen:
            known = sorted({a.alias for a in available} | set(DEVICE_REQUESTS))
            if strict or not _is_known_name(key):
                raise PlacementError(
                    f"device {requested!r} is not available here; available: {_names(available)}",
                    hint=f"Use one of: {', '.join(known)}.",
                )
    if strict:
        return _dedupe(chosen)
    return _dedupe([*chosen, *cpu])


def satisfies(accelerator: Accelerator, requested: str) -> bool:
    """Whether running on ``accelerator`` is what ``requested`` asked for (any, for "auto")."""
    key = requested.strip().lower()
    return key == "auto" or key == accelerator.kind or key in (accelerator.name.lower(), accelerator.alias.lower())


# Names a user may legitimately ask for on a machine that lacks them: without strict they
# fall back to the CPU instead of failing (the app was written for a device that has one).
_KNOWN_ACCELERATORS = {
    "cuda", "tensorrt", "rocm", "migraphx", "directml", "webgpu", "coreml", "qnn", "nnapi", "openvino",
    "xnnpack", "vitisai", "gpu_delegate", "hexagon", "ane", "metal", "vulkan",
}


def _is_known_name(key: str) -> bool:
    return key in _KNOWN_ACCELERATORS or key.endswith("executionprovider")


def _dedupe(items: list[Accelerator]) -> list[Accelerator]:
    seen: set[tuple[str, str]] = set()
    out = []
    for item in items:
        ident = (item.backend, item.name)
        if ident not in seen:
            seen.add(ident)
            out.append(item)
    return out


def _names(available: Sequence[Accelerator]) -> str:
    return ", ".join(f"{a.alias} ({a.kind})" for a in available) or "none"
