"""Accuracy-driven quantization: keep the most INT8-sensitive nodes in float (:func:`quantize_accuracy_driven`)."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.converters._onnx_quantize._calibration import _validate_calibration
from edgewise.converters._onnx_quantize._graph import (
    _WEIGHT_INPUT,
    QuantResult,
    _ensure_node_names,
    _load,
    _onnx_copy,
    _quantizable,
    _relocate,
    _save,
    _weight_elements,
)
from edgewise.converters._onnx_quantize._smoothing import SMOOTH_ALPHAS, _smooth_activations
from edgewise.converters._onnx_quantize.dynamic import DYNAMIC_DEFAULT_OP_TYPES, quantize_dynamic_int8
from edgewise.converters._onnx_quantize.static import STATIC_DEFAULT_OP_TYPES, quantize_static_int8
from edgewise.errors import ConversionError, DataError, EdgewiseError

_log = logging.getLogger(__name__)


def quantize_accuracy_driven(
    src: Path,
    dst: Path,
    *,
    score: Callable[[Path], float],
    threshold: float,
    base: str = "dynamic",
    calibration: Sequence[Mapping[str, np.ndarray]] | None = None,
    method: str = "minmax",
    per_channel: bool = True,
    max_float_fraction: float = 0.25,
    progress: Callable[[str], None] | None = None,
) -> QuantResult:
    """Accuracy-driven quantization: find the nodes most sensitive to INT8 and keep them in float
    until ``score(path) >= threshold`` (higher is better), within a float-weights budget.

    Why this search, and why it is affordable:

    0. (dynamic base with ``calibration``) Activation smoothing first, its strength picked from
       ``SMOOTH_ALPHAS`` with the caller's own score: cheaper than any float node (costs no bytes).
    1. Quantize every candidate (constant-weight node of the base scheme's op types). Pass -> done.
    2. Sensitivity = the caller's metric with *only that node* left in float (leave-one-out). A proxy
       such as a node's local output error ranks nodes by how wrong they are locally, not by what the
       gate measures. Cost: one quantize + one score per candidate (MiniLM: 38 x ~5 s).
       Candidates whose weights alone exceed the budget (e.g. a word-embedding table) are skipped.
    3. Forward selection: walk the nodes most-sensitive first; keep one in float only if the score
       improves (metrics such as a minimum cosine are not monotone in the float set), until the gate
       holds or the budget is spent.
    4. Prune: re-quantize each kept node, least sensitive first, while the gate still holds.

    ``max_float_fraction`` caps the float share of the candidates' weight elements, so the size win
    cannot silently vanish; failing within it raises ConversionError with the best score and its float
    nodes. Every scored configuration is in ``QuantResult.search`` and announced via ``progress``.
    """
    if base not in ("dynamic", "static"):
        raise ConversionError(f"unknown base scheme {base!r}; choose 'dynamic' or 'static'")
    if not 0.0 <= max_float_fraction <= 1.0:
        raise ConversionError(f"max_float_fraction must be within [0, 1], got {max_float_fraction}")
    if base == "static" and not calibration:
        raise DataError("accuracy-driven static quantization needs calibration data (feed dicts)")
    say = progress or (lambda msg: _log.info("%s", msg))
    t_start = time.perf_counter()

    model = _load(src)
    _ensure_node_names(model)
    feeds = _validate_calibration(model, calibration) if calibration is not None else None
    present = {n.op_type for n in model.graph.node}
    if base == "dynamic":
        ops = [*DYNAMIC_DEFAULT_OP_TYPES, *(["Attention"] if "Attention" in present else [])]
    else:
        ops = list(STATIC_DEFAULT_OP_TYPES)
    cand_nodes = [n for n in _quantizable(model, ops) if n.op_type in _WEIGHT_INPUT]
    weights = {n.name: _weight_elements(model, n) for n in cand_nodes}
    total = sum(weights.values()) or 1

    def fraction(nodes: Sequence[str]) -> float:
        return sum(weights[n] for n in nodes) / total

    steps: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="edgewise-qad-"))
    counter = iter(range(1_000_000))
    source = Path(src)
    smooth_note: list[str] = []

    def attempt(float_nodes: list[str], phase: str, **extra: Any) -> tuple[float, QuantResult]:
        path = tmp / f"step{next(counter)}.onnx"
        t0 = time.perf_counter()
        if base == "dynamic":
            res = quantize_dynamic_int8(source, path, per_channel=per_channel, exclude_nodes=float_nodes)
        else:
            assert feeds is not None
            res = quantize_static_int8(
                source, path, feeds, method=method, per_channel=per_channel, exclude_nodes=float_nodes
            )
        try:
            value = float(score(path))
        except EdgewiseError:
            raise
        except Exception as exc:
            raise ConversionError(f"the score callable failed on {path.name}: {exc}") from exc
        if math.isnan(value):
            raise ConversionError(f"the score callable returned NaN for {path.name}")
        steps.append(
            {
                "phase": phase,
                "float_nodes": list(float_nodes),
                "score": value,
                "float_fraction": round(fraction(float_nodes), 4),
                "seconds": round(time.perf_counter() - t0, 2),
                **extra,
            }
        )
        say(f"[{phase}] float={len(float_nodes)} ({fraction(float_nodes):.1%} of weights) score={value:.5f}")
        return value, res

    def drop(res: QuantResult | None) -> None:
        if res is not None:
            res.path.unlink(missing_ok=True)

    def done(res: QuantResult, float_nodes: list[str], value: float, notes: list[str]) -> QuantResult:
        final = _relocate(res, dst)
        final.float_nodes = list(float_nodes)
        final.search = steps
        final.notes[:0] = smooth_note
        final.notes.extend(notes)
        final.notes.append(
            f"accuracy-driven ({base}): score {value:.5f} >= {threshold} with {len(float_nodes)} float "
            f"node(s), {fraction(float_nodes):.1%} of weights; {len(steps)} configurations scored in "
            f"{time.perf_counter() - t_start:.1f} s"
        )
        return final

    try:
        # 0 + 1: all-INT8; only when that misses, the best smoothing strength (when data allows it).
        # Smoothing adds a Mul per smoothed input: free in bytes, not in time (measured ~5 %), so a
        # model that passes without it does not get it.
        s0, r0 = attempt([], "all-int8")
        if s0 < threshold and base == "dynamic" and feeds is not None:
            best_all: tuple[float, QuantResult | None, Path] = (s0, r0, source)
            for alpha in SMOOTH_ALPHAS:
                smoothed = tmp / f"smoothed-{alpha}.onnx"
                trial = _onnx_copy(model)
                note = _smooth_activations(trial, feeds, alpha=alpha)
                _save(trial, smoothed)
                source = smoothed
                value, res = attempt([], "smoothing", alpha=alpha)
                if value > best_all[0]:
                    drop(best_all[1])
                    best_all = (value, res, smoothed)
                    smooth_note = note
                else:
                    drop(res)
            s0, r0, source = best_all
            assert r0 is not None
        del model
        if s0 >= threshold:
            return done(r0, [], s0, [])

        best: tuple[float, list[str]] = (s0, [])
        eligible = [n for n in weights if fraction([n]) <= max_float_fraction]
        skipped = [n for n in weights if n not in eligible]
        notes = [f"all-INT8 score {s0:.5f} < {threshold}: searched for sensitive nodes"]
        if skipped:
            notes.append(f"never kept in float (weights alone exceed the budget): {skipped}")
        say(f"sensitivity: scoring {len(eligible)} candidates one at a time in float")
        gain: dict[str, float] = {}
        single_pass: list[tuple[int, float, str, QuantResult]] = []
        top_single: tuple[float, str, QuantResult | None] = (-math.inf, "", None)
        for name in eligible:
            value, res = attempt([name], "sensitivity")
            gain[name] = value - s0
            if value >= threshold:
                single_pass.append((weights[name], -value, name, res))
            elif value > top_single[0]:
                drop(top_single[2])
                top_single = (value, name, res)
            else:
                drop(res)
        if single_pass:
            single_pass.sort(key=lambda t: t[:2])
            _, neg, name, res = single_pass[0]
            for other in single_pass[1:]:
                drop(other[3])
            drop(top_single[2])
            notes.append(f"one node in float suffices; chose the smallest passing: {name}")
            return done(res, [name], -neg, notes)

        order = sorted(eligible, key=lambda n: -gain[n])
        chosen: list[str] = []
        current: tuple[float, QuantResult | None] = (s0, r0)
        for name in order:
            if current[0] >= threshold:
                break
            if fraction([*chosen, name]) > max_float_fraction:
                continue
            if not chosen and name == top_single[1]:
                value, res = top_single[0], top_single[2]  # scored alone already
            else:
                value, res = attempt([*chosen, name], "forward")
            if value > current[0]:
                drop(current[1])
                chosen.append(name)
                current = (value, res)
                if value > best[0]:
                    best = (value, list(chosen))
            else:
                drop(res)
        if current[0] < threshold:
            drop(current[1])
            raise ConversionError(
                f"accuracy-driven quantization could not reach score >= {threshold} within "
                f"max_float_fraction={max_float_fraction}: best score {best[0]:.5f} "
                f"with float nodes {best[1]}",
                hint="Raise max_float_fraction, relax the threshold, or try another base scheme.",
            )

        value, res = current
        assert res is not None
        for name in sorted(chosen[:-1], key=lambda n: gain[n]):  # least sensitive first
            trial = [n for n in chosen if n != name]
            t_value, t_res = attempt(trial, "prune")
            if t_value >= threshold:
                drop(res)
                chosen, value, res = trial, t_value, t_res
            else:
                drop(t_res)
        notes.append(f"kept in float (most sensitive first): {sorted(chosen, key=lambda n: -gain[n])}")
        return done(res, chosen, value, notes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
