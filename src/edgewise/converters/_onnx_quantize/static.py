"""Static INT8 quantization in QDQ format, calibrated on sample feeds (:func:`quantize_static_int8`)."""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.converters._onnx_quantize._calibration import _validate_calibration
from edgewise.converters._onnx_quantize._graph import (
    QuantResult,
    _check_excludes,
    _constant_names,
    _engine,
    _ensure_node_names,
    _finish,
    _has_external_data,
    _load,
    _save,
)
from edgewise.errors import ConversionError, DataError, EdgewiseError

#: Static QDQ mode: compute ops with fused int8 CPU kernels (QLinearConv, QLinearMatMul/
#: MatMulIntegerToFloat, QGemm) plus the cheap ops around them that ORT can run on int8 tensors
#: (pooling, ReLU/Clip folded into the preceding op, pure data movement), so a conv stack stays in
#: int8 between layers instead of paying a Q/DQ round trip at every op. Add/Mul/LayerNorm/Softmax are
#: left in float: in transformers and residual nets they carry the outlier-heavy sums that INT8 breaks.
STATIC_DEFAULT_OP_TYPES: tuple[str, ...] = (
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "Gather",
    "Relu",
    "Clip",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Resize",
)

CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")


def _reader(feeds: list[dict[str, np.ndarray]]) -> Any:
    """Wrap feed dicts in ORT's CalibrationDataReader; rewindable because calibrators may re-read."""
    _, ortq = _engine()

    class _FeedReader(ortq.CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(feeds)

        def __len__(self) -> int:
            return len(feeds)

    return _FeedReader()


def _preprocess(src: Path, dst: Path, keep: Sequence[str], notes: list[str]) -> Path:
    """Run ORT's ``quant_pre_process`` (symbolic shape inference + graph optimization).

    Quantizing an un-preprocessed model leaves un-fused patterns and unknown shapes that make the
    quantizer skip nodes. Milder variants are tried in turn: symbolic shape inference fails on some
    Hugging Face exports ("Incomplete symbolic shape inference", seen on MiniLM), and graph
    optimization may rename nodes the caller keeps in float. If every variant fails, the original
    model is quantized and the reasons are recorded in ``notes``.
    """
    onnx, _ = _engine()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    attempts: list[tuple[str, dict[str, bool]]] = [
        ("full", {}),
        ("auto_merge", {"auto_merge": True}),
        ("no symbolic shapes", {"skip_symbolic_shape": True}),
        ("no optimization", {"skip_symbolic_shape": True, "skip_optimization": True}),
    ]
    failures: list[str] = []
    for label, kwargs in attempts:
        try:
            quant_pre_process(str(src), str(dst), **kwargs)
            names = {n.name for n in onnx.load(str(dst), load_external_data=False).graph.node}
        except Exception as exc:  # any failure: try the next, milder variant and record why
            failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        if not all(k in names for k in keep):
            failures.append(f"{label}: renamed nodes kept in float")
            continue
        if failures:
            notes.append(f"quant_pre_process ran as '{label}' after: {'; '.join(failures)}")
        return dst
    notes.append(f"quant_pre_process failed, quantized the raw model ({'; '.join(failures)})")
    return src


def quantize_static_int8(
    src: Path,
    dst: Path,
    calibration: Sequence[Mapping[str, np.ndarray]],
    *,
    method: str = "minmax",
    per_channel: bool = True,
    op_types: Sequence[str] | None = None,
    exclude_nodes: Sequence[str] = (),
) -> QuantResult:
    """Static INT8 in QDQ format, activation ranges calibrated on ``calibration`` feed dicts.

    QDQ (rather than QOperator) because it is what ORT's CPU graph optimizer fuses into its fastest
    int8 kernels, and the same file stays portable to other execution providers. Activations are
    uint8 and weights int8 (U8S8), the fast path on x86 VNNI. ``method``: "minmax" (default; robust
    with few samples), "entropy" or "percentile" (clip outliers; want more samples).
    """
    _, ortq = _engine()
    if method not in CALIBRATION_METHODS:
        raise ConversionError(f"unknown calibration method {method!r}; choose one of {CALIBRATION_METHODS}")
    model = _load(src)
    _ensure_node_names(model)
    _check_excludes(model, exclude_nodes)
    feeds = _validate_calibration(model, calibration)
    if method != "minmax":
        shapes = {tuple((k, v.shape) for k, v in sorted(feed.items())) for feed in feeds}
        if len(shapes) > 1:
            # ORT's histogram collector stacks every batch with np.asarray and crashes with
            # "inhomogeneous shape" on variable sequence lengths; say so before it does.
            raise DataError(
                f"calibration method {method!r} needs every sample to have the same shapes; got "
                f"{len(shapes)} different shape sets (pad to a fixed length, or use method='minmax')"
            )
    ops = list(op_types) if op_types is not None else list(STATIC_DEFAULT_OP_TYPES)
    notes: list[str] = []
    excluded = list(exclude_nodes)
    if op_types is None:
        # attention's Q @ K^T and P @ V have no weights to shrink; static per-tensor ranges on them
        # (softmax probabilities included) cost MiniLM most of its accuracy
        consts = _constant_names(model)
        act_mm = [
            n.name
            for n in model.graph.node
            if n.op_type == "MatMul" and n.name not in excluded and not any(i in consts for i in n.input)
        ]
        if act_mm:
            excluded += act_mm
            notes.append(f"{len(act_mm)} activation x activation MatMul(s) kept in float (no weights)")
    calib_method = {
        "minmax": ortq.CalibrationMethod.MinMax,
        "entropy": ortq.CalibrationMethod.Entropy,
        "percentile": ortq.CalibrationMethod.Percentile,
    }[method]
    extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = 99.999

    with tempfile.TemporaryDirectory(prefix="edgewise-q-") as tmp:
        named, pre, qpath = Path(tmp) / "named.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "quantized.onnx"
        _save(model, named)
        source = _preprocess(named, pre, excluded, notes)
        try:
            # ORT's histogram calibrators print progress to stdout; keep a CLI's output clean
            with contextlib.redirect_stdout(io.StringIO()):
                ortq.quantize_static(
                    source,
                    qpath,
                    _reader(feeds),
                    quant_format=ortq.QuantFormat.QDQ,
                    op_types_to_quantize=ops,
                    per_channel=per_channel,
                    reduce_range=False,
                    activation_type=ortq.QuantType.QUInt8,
                    weight_type=ortq.QuantType.QInt8,
                    nodes_to_exclude=excluded,
                    calibrate_method=calib_method,
                    use_external_data_format=_has_external_data(model),
                    extra_options=extra,
                )
        except EdgewiseError:
            raise
        except Exception as exc:
            raise ConversionError(f"onnxruntime static quantization of {src} failed: {exc}") from exc
        if exclude_nodes:
            notes.append(f"{len(exclude_nodes)} node(s) kept in float on request")
        return _finish(
            qpath,
            dst,
            scheme="int8-static",
            per_channel=per_channel,
            float_nodes=excluded,
            calibration={
                "method": method,
                "batches": len(feeds),
                "samples": int(sum(next(iter(f.values())).shape[0] if f else 0 for f in feeds)),
            },
            notes=notes,
            requested=ops,
        )
