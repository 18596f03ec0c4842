"""INT8 quantization engine of the ONNX converter, built on ``onnxruntime.quantization``.

Three entry points, from cheapest to most careful:

* :func:`quantize_dynamic_int8` -- weights INT8 ahead of time, activations quantized at run time.
  Needs no data. The default for transformer-style models (MatMul/Gemm/Gather heavy).
* :func:`quantize_static_int8` -- QDQ format with activation ranges calibrated on sample feeds.
  The right choice for convolutional models: ORT fuses ``DQ -> Conv -> Q`` into ``QLinearConv``,
  whereas dynamic quantization of a Conv gives ``ConvInteger``, measured 8-16x *slower* than FP32
  at batch 32 on this project's reference CPU (see shared/stack-notes.md). Dynamic therefore never
  touches Conv unless the caller names it explicitly.
* :func:`quantize_accuracy_driven` -- quantizes everything, and if the caller's metric misses its
  threshold, finds the nodes most sensitive to INT8 and keeps just those in float, within a budget
  on the fraction of weights left in float (so the size win cannot silently disappear).

Everything that can go wrong is reported as :class:`~edgewise.errors.ConversionError` (or
:class:`~edgewise.errors.DataError` for unusable calibration data), with the engine exception
attached as ``__cause__``, so callers never import onnxruntime to handle failures.

onnx / onnxruntime are imported lazily: importing this module must not require the ONNX extra.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgewise.errors import ConversionError, DataError, EdgewiseError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnx

__all__ = [
    "CALIBRATION_METHODS",
    "DYNAMIC_DEFAULT_OP_TYPES",
    "SMOOTH_ALPHAS",
    "STATIC_DEFAULT_OP_TYPES",
    "QuantResult",
    "quantizable_nodes",
    "quantize_accuracy_driven",
    "quantize_dynamic_int8",
    "quantize_static_int8",
]

_log = logging.getLogger(__name__)


class _DropPreprocessHint(logging.Filter):
    """onnxruntime logs "Please consider to run pre-processing" on the root logger for every dynamic
    quantization; edgewise has already prepared the graph, so the hint is noise in CI logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _without_preprocess_hint() -> Iterator[None]:
    root = logging.getLogger()
    hint_filter = _DropPreprocessHint()
    root.addFilter(hint_filter)
    try:
        yield
    finally:
        root.removeFilter(hint_filter)

#: Dynamic mode: the ops whose integer kernels beat FP32 on CPU. Gather is the embedding table
#: (often half of a small transformer's bytes), so quantizing it is a big size win at no speed cost.
#: ``Attention`` (the fused contrib op) is added when the graph has one. Conv is deliberately absent.
DYNAMIC_DEFAULT_OP_TYPES: tuple[str, ...] = ("MatMul", "Gemm", "Gather")

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

#: Smoothing strengths the accuracy-driven search scores (dynamic base with calibration data).
#: On MiniLM the best alpha moved between 0.6 and 0.7 with the sentence set; 0.5 was clearly worse.
SMOOTH_ALPHAS: tuple[float, ...] = (0.5, 0.6, 0.7)

# Which input of an op holds its weight; an op of these types is "quantizable" only when that input
# is a constant (initializer), because that is where the size win and the integer kernel come from.
_WEIGHT_INPUT: dict[str, int] = {
    "MatMul": 1,
    "Gemm": 1,
    "Conv": 1,
    "ConvTranspose": 1,
    "Attention": 1,
    "LSTM": 1,
    "Gather": 0,
    "GatherElements": 0,
}

# Integer ops that replace a float op in the quantized graph (dynamic / QOperator forms).
_INTEGER_TO_FLOAT_OP: dict[str, str] = {
    "MatMulInteger": "MatMul",
    "DynamicQuantizeMatMul": "MatMul",
    "MatMulIntegerToFloat": "MatMul",
    "QLinearMatMul": "MatMul",
    "ConvInteger": "Conv",
    "QLinearConv": "Conv",
    "QGemm": "Gemm",
    "QAttention": "Attention",
    "DynamicQuantizeLSTM": "LSTM",
}
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
_TWO_GB = 2**31 - 1


@dataclass
class QuantResult:
    """What a quantization run produced, and the decisions behind it.

    Kept as plain data so the converter can copy it into the bundle manifest and the gate report:
    a reviewer should be able to tell from the manifest alone which nodes stayed in float and why.
    """

    path: Path  # the quantized .onnx written
    scheme: str  # "int8-dynamic" | "int8-static" (static = QDQ format)
    per_channel: bool
    op_types: list[str]  # operator types that were quantized
    float_nodes: list[str]  # node names deliberately kept in float
    calibration: dict | None  # {"method": ..., "batches": B, "samples": N} for static
    notes: list[str] = field(default_factory=list)  # human-readable decisions
    search: list[dict] = field(default_factory=list)  # accuracy-driven steps: {"float_nodes", "score", ...}


# --------------------------------------------------------------------------------------------- engine


def _engine() -> tuple[Any, Any]:
    """Import onnx and onnxruntime.quantization on first use (the ONNX extra is optional)."""
    try:
        import onnx
        import onnxruntime.quantization as ortq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConversionError(
            f"INT8 quantization needs onnx and onnxruntime: {exc}",
            hint="pip install 'edgewise[onnx]' (onnx, onnxruntime).",
        ) from exc
    return onnx, ortq


def _load(src: Path) -> onnx.ModelProto:
    onnx, _ = _engine()
    src = Path(src)
    if not src.is_file():
        raise ConversionError(f"ONNX model not found: {src}")
    try:
        return onnx.load(str(src))
    except Exception as exc:
        raise ConversionError(f"cannot read ONNX model {src}: {exc}") from exc


def _ensure_node_names(model: onnx.ModelProto) -> None:
    """Give unnamed nodes a deterministic name: exclusion and reports address nodes by name."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def _onnx_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """Deep copy of a model (graph passes here edit in place)."""
    onnx, _ = _engine()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _initializers(model: onnx.ModelProto) -> dict[str, Any]:
    return {init.name: init for init in model.graph.initializer}


def _constant_names(model: onnx.ModelProto) -> set[str]:
    names = set(_initializers(model))
    names.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    return names


def _weight_elements(model: onnx.ModelProto, node: onnx.NodeProto) -> int:
    idx = _WEIGHT_INPUT.get(node.op_type)
    init = _initializers(model).get(node.input[idx]) if idx is not None and len(node.input) > idx else None
    return int(np.prod(init.dims)) if init is not None else 0


def _quantizable(model: onnx.ModelProto, op_types: Sequence[str]) -> list[onnx.NodeProto]:
    consts = _constant_names(model)
    wanted = set(op_types)
    out = []
    for node in model.graph.node:
        if node.op_type not in wanted:
            continue
        idx = _WEIGHT_INPUT.get(node.op_type)
        if idx is not None and (len(node.input) <= idx or node.input[idx] not in consts):
            continue  # activation x activation MatMul, Gather on a computed tensor, ...
        out.append(node)
    return out


def quantizable_nodes(src: Path, op_types: Sequence[str]) -> list[str]:
    """Names of the nodes of ``op_types`` that quantization would actually touch, in graph order.

    Weight-bearing ops (MatMul, Gemm, Conv, Gather, ...) count only when their weight is a constant:
    ``Q @ K^T`` in attention is a MatMul too, but dynamic quantization leaves it alone and it has no
    bytes to save. These names are what ``exclude_nodes`` and the accuracy-driven search work with.
    Unnamed nodes get the same deterministic name (``<OpType>_<index>``) everywhere in this module.
    """
    model = _load(src)
    _ensure_node_names(model)
    return [n.name for n in _quantizable(model, op_types)]


def _save(model: onnx.ModelProto, path: Path) -> None:
    onnx, _ = _engine()
    large = model.ByteSize() > _TWO_GB
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=path.name + ".data" if large else None,
    )


def _gemm_to_matmul(model: onnx.ModelProto) -> list[str]:
    """Rewrite constant-weight Gemm as MatMul (+ Add) so dynamic quantization can reach it.

    ORT's dynamic (IntegerOps) registry has no Gemm entry: a Gemm-exported Linear layer would silently
    stay FP32. The MatMul keeps the Gemm's node name so user exclusions still apply.
    """
    _engine()
    from onnx import helper, numpy_helper

    inits = _initializers(model)
    rewritten: list[str] = []
    replaced: set[str] = set()
    new_nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        b = inits.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        c_name = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else ""
        if b is None or attrs.get("transA", 0) or (c_name and c_name not in inits):
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(b)
        w = (w.T if attrs.get("transB", 0) else w) * np.asarray(attrs.get("alpha", 1.0), dtype=w.dtype)
        w_init = numpy_helper.from_array(np.ascontiguousarray(w), f"{node.name}/matmul_weight")
        model.graph.initializer.append(w_init)
        mm_out = f"{node.output[0]}/matmul" if c_name else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], w_init.name], [mm_out], name=node.name))
        if c_name:
            cval = numpy_helper.to_array(inits[c_name]) * np.asarray(attrs.get("beta", 1.0), w.dtype)
            c_init = numpy_helper.from_array(cval.astype(w.dtype), f"{node.name}/bias")
            model.graph.initializer.append(c_init)
            new_nodes.append(
                helper.make_node("Add", [mm_out, c_init.name], [node.output[0]], name=f"{node.name}/bias_add")
            )
        rewritten.append(node.name)
        replaced.update(i for i in node.input[1:] if i)
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
        # drop the old Gemm weights unless something else may still read them (another node, a graph
        # input of the same name, or a subgraph -- whose references this pass does not follow)
        has_subgraphs = any(a.type in (5, 10) for n in model.graph.node for a in n.attribute)  # GRAPH(S)
        used = {i for n in model.graph.node for i in n.input} | {i.name for i in model.graph.input}
        if not has_subgraphs:
            keep = [i for i in model.graph.initializer if i.name in used or i.name not in replaced]
            del model.graph.initializer[:]
            model.graph.initializer.extend(keep)
    return rewritten


def _check_excludes(model: onnx.ModelProto, exclude_nodes: Sequence[str]) -> None:
    names = {n.name for n in model.graph.node}
    unknown = [n for n in exclude_nodes if n not in names]
    if unknown:
        raise ConversionError(
            f"exclude_nodes names {len(unknown)} node(s) not in the model: {unknown[:5]}",
            hint="Use quantizable_nodes() to list the node names that quantization can touch.",
        )


def _quantized_op_types(qmodel: onnx.ModelProto, requested: Sequence[str]) -> tuple[list[str], int]:
    """Read back from the quantized graph which of the requested op types now run on INT8 data.

    A node counts when it became an integer op (MatMulInteger, QLinearConv, ...) or, in QDQ form,
    reads a DequantizeLinear output or an 8-bit initializer. Only requested types are reported:
    in QDQ form every consumer of a quantized tensor (Shape, Add, ...) reads a DQ output too.
    """
    wanted = set(requested)
    int_inits = {i.name for i in qmodel.graph.initializer if i.data_type in (2, 3)}  # UINT8, INT8
    produced_by = {o: n.op_type for n in qmodel.graph.node for o in n.output}
    found: list[str] = []
    for node in qmodel.graph.node:
        if node.op_type in _QDQ_OPS:
            continue
        if node.op_type in _INTEGER_TO_FLOAT_OP:
            found.append(_INTEGER_TO_FLOAT_OP[node.op_type])
        elif node.op_type in wanted and any(
            produced_by.get(i) == "DequantizeLinear" or i in int_inits for i in node.input
        ):
            found.append(node.op_type)
    return sorted(set(found)), len(found)


def _has_external_data(model: onnx.ModelProto) -> bool:
    """Whether the quantizer must write external data (protobuf cannot hold > 2 GB)."""
    return model.ByteSize() > _TWO_GB


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(init.data_location == 1 for init in model.graph.initializer)  # TensorProto.EXTERNAL


def _copy_model(src: Path, dst: Path, *, external: bool) -> None:
    """Copy a model file; external-data models are re-saved so the data file is named after ``dst``
    (a plain copy would keep pointing at the temporary file's data name)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src == dst:
        return
    if not external:
        shutil.copyfile(src, dst)
        return
    onnx, _ = _engine()  # pragma: no cover - >2 GB models only
    _save(onnx.load(str(src)), dst)  # pragma: no cover


def _finish(
    qpath: Path,
    dst: Path,
    *,
    scheme: str,
    per_channel: bool,
    float_nodes: list[str],
    calibration: dict | None,
    notes: list[str],
    requested: Sequence[str],
) -> QuantResult:
    onnx, _ = _engine()
    try:
        qmodel = onnx.load(str(qpath), load_external_data=False)
    except Exception as exc:
        raise ConversionError(f"onnxruntime wrote an unreadable model {qpath}: {exc}") from exc
    op_types, count = _quantized_op_types(qmodel, requested)
    if count == 0:
        notes.append("nothing was quantized: no node of the requested op types has constant weights")
    else:
        notes.append(f"{count} node(s) quantized: {', '.join(op_types)}")
    dst = Path(dst)
    _copy_model(qpath, dst, external=_uses_external_data(qmodel))
    return QuantResult(
        path=dst,
        scheme=scheme,
        per_channel=per_channel,
        op_types=op_types,
        float_nodes=float_nodes,
        calibration=calibration,
        notes=notes,
        search=[],
    )


# ----------------------------------------------------------------------------- activation smoothing


def _smooth_activations(
    model: onnx.ModelProto,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    alpha: float,
) -> list[str]:
    """SmoothQuant-style equalization for dynamic INT8, in place; returns one note per decision.

    Dynamic quantization gives each activation tensor ONE uint8 scale per batch. Transformers have
    a few channels (and the [CLS] token) with activations 5-10x larger than the rest, so that scale
    leaves ordinary tokens a handful of levels: on MiniLM the worst sentence fell to cosine 0.957.
    For every constant-weight MatMul input X (shared by Q/K/V), a per-channel factor s moves the range
    into the weights, which are quantized per channel and do not care: ``X @ W == (X / s) @ (s * W)``
    exactly in float. ``X / s`` is an explicit Mul node (X also feeds residual Adds, so it cannot be
    folded into the LayerNorm). ``s_j = max|X_j|^a / max|W_j|^(1-a)`` (clipped to [1e-2, 1e2]).
    A per-tensor alpha tuned on an emulated per-token error was tried and dropped: it chose 0.7-0.8
    and lowered the held-out worst case (0.960 vs 0.983 at a fixed 0.6).
    """
    onnx, _ = _engine()
    from onnx import helper, numpy_helper

    inits = _initializers(model)
    use_count: dict[str, int] = {}
    for node in model.graph.node:
        for i in node.input:
            use_count[i] = use_count.get(i, 0) + 1
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if (
            node.op_type == "MatMul"
            and node.input[1] in inits
            and use_count[node.input[1]] == 1
            and len(inits[node.input[1]].dims) == 2
            and inits[node.input[1]].data_type == 1  # FLOAT: fp16 weights are left alone
        ):
            groups.setdefault(node.input[0], []).append(node)
    if not groups:
        return []
    # an input shared with an ineligible MatMul (activation x activation) cannot be rescaled
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[0] in groups and node not in groups[node.input[0]]:
            groups.pop(node.input[0], None)
    if not groups:
        return []

    probe = _onnx_copy(model)
    outputs = {o.name for o in probe.graph.output}
    for name in groups:
        if name not in outputs:
            probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        names = list(groups)
        amaxes: dict[str, np.ndarray] = {}
        for feed in feeds[:8]:  # a few batches suffice for channel maxima
            for name, value in zip(names, sess.run(names, dict(feed)), strict=True):
                # every position counts, padding included: the run-time scale sees it too
                m = np.abs(np.asarray(value, dtype=np.float32)).reshape(-1, value.shape[-1]).max(axis=0)
                amaxes[name] = np.maximum(amaxes[name], m) if name in amaxes else m
    except Exception as exc:
        raise ConversionError(f"activation smoothing could not run the float model: {exc}") from exc

    chosen: list[str] = []
    muls: dict[str, Any] = {}
    for name, nodes in groups.items():
        amax = np.maximum(amaxes[name], 1e-5)
        if any(inits[n.input[1]].dims[0] != amax.shape[0] for n in nodes):
            continue
        ws = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in nodes]
        w = np.concatenate(ws, axis=1)
        wmax = np.maximum(np.abs(w).max(axis=1), 1e-5)

        s = np.clip(amax**alpha / wmax ** (1.0 - alpha), 1e-2, 1e2).astype(np.float32)
        chosen.append(name)
        inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{name}/smooth_inv")
        model.graph.initializer.append(inv)
        smoothed = f"{name}/smoothed"
        muls[nodes[0].name] = helper.make_node("Mul", [name, inv.name], [smoothed], name=f"{name}/smooth")
        for n, wt in zip(nodes, ws, strict=True):
            inits[n.input[1]].CopyFrom(numpy_helper.from_array(wt * s[:, None], n.input[1]))
            n.input[0] = smoothed
    if muls:  # each Mul goes right before the first MatMul it feeds, keeping topological order
        ordered = []
        for node in model.graph.node:
            if node.name in muls:
                ordered.append(muls[node.name])
            ordered.append(node)
        del model.graph.node[:]
        model.graph.node.extend(ordered)
    return (
        [
            f"activation smoothing (SmoothQuant-style, alpha={alpha}, {len(feeds[:8])} batches) on "
            f"{len(chosen)} MatMul input(s): evens out per-tensor dynamic activation scales"
        ]
        if chosen
        else []
    )


# -------------------------------------------------------------------------------------------- dynamic


def quantize_dynamic_int8(
    src: Path,
    dst: Path,
    *,
    per_channel: bool = True,
    op_types: Sequence[str] | None = None,
    exclude_nodes: Sequence[str] = (),
    smooth: Sequence[Mapping[str, np.ndarray]] | None = None,
    smooth_alpha: float = 0.6,
) -> QuantResult:
    """Dynamic INT8: weights quantized now, activations per batch at run time; no data needed.

    ``per_channel`` defaults to True because per-tensor weight scales cost MiniLM a worst-case cosine
    of 0.82 vs FP32 (0.957 per channel) for no measurable speed gain (both ~2.2x FP32 at batch 32).
    Conv is never quantized unless listed in ``op_types``: ORT's ConvInteger is far slower than FP32
    on CPU (use static QDQ instead).
    Constant-weight Gemm is rewritten to MatMul first, since ORT's dynamic mode ignores Gemm.

    ``smooth`` (optional feed dicts, like calibration data) enables SmoothQuant-style activation
    smoothing first (see ``_smooth_activations``): exact in float, it moved MiniLM's worst-sentence
    cosine from 0.957 to ~0.98 (held-out set) at no size cost and ~5 % speed. ``smooth_alpha`` is the
    migration strength (0 = none, 1 = all into the weights); 0.6-0.7 measured best on MiniLM, 0.5 and
    0.8-0.9 clearly worse.
    """
    _, ortq = _engine()
    model = _load(src)
    _ensure_node_names(model)
    _check_excludes(model, exclude_nodes)
    notes: list[str] = []
    present = {n.op_type for n in model.graph.node}
    if op_types is None:
        ops = list(DYNAMIC_DEFAULT_OP_TYPES) + (["Attention"] if "Attention" in present else [])
        convs = [n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
        if convs:
            notes.append(
                f"Conv kept in float ({len(convs)} node(s)): ConvInteger is slower than FP32 on CPU "
                "(8-16x at batch 32 measured); use int8-static (QDQ) to quantize convolutions"
            )
    else:
        ops = list(op_types)
        convs = []
    float_nodes = list(dict.fromkeys([*exclude_nodes, *convs]))
    if "Gemm" in ops:
        rewritten = _gemm_to_matmul(model)
        if rewritten:
            if "MatMul" not in ops:
                ops.append("MatMul")
            why = "ORT dynamic mode has no Gemm kernel"
            notes.append(f"{len(rewritten)} Gemm rewritten as MatMul+Add: {why}")
    if smooth is not None:
        feeds = _validate_calibration(model, smooth)
        notes.extend(_smooth_activations(model, feeds, alpha=smooth_alpha))
    if not per_channel:
        notes.append("per-tensor weight scales: expect a larger accuracy loss than per_channel=True")
    if float_nodes and exclude_nodes:
        notes.append(f"{len(exclude_nodes)} node(s) kept in float on request")

    with tempfile.TemporaryDirectory(prefix="edgewise-q-") as tmp:
        prep, qpath = Path(tmp) / "prepared.onnx", Path(tmp) / "quantized.onnx"
        _save(model, prep)
        try:
            with _without_preprocess_hint():
                ortq.quantize_dynamic(
                    prep,
                    qpath,
                    op_types_to_quantize=ops,
                    per_channel=per_channel,
                    reduce_range=False,  # 7-bit weights: measured worse on MiniLM; only for pre-VNNI CPUs
                    weight_type=ortq.QuantType.QInt8,
                    nodes_to_exclude=list(float_nodes),
                    use_external_data_format=_has_external_data(model),
                    extra_options={"MatMulConstBOnly": True},
                )
        except Exception as exc:
            raise ConversionError(f"onnxruntime dynamic quantization of {src} failed: {exc}") from exc
        return _finish(
            qpath,
            dst,
            scheme="int8-dynamic",
            per_channel=per_channel,
            float_nodes=float_nodes,
            calibration=None,
            notes=notes,
            requested=ops,
        )


# --------------------------------------------------------------------------------------------- static


def _np_dtype(elem_type: int) -> np.dtype:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def _validate_calibration(
    model: onnx.ModelProto, calibration: Sequence[Mapping[str, np.ndarray]] | None
) -> list[dict[str, np.ndarray]]:
    """Check every feed against the model signature up front.

    ORT's calibrator would otherwise fail deep inside an InferenceSession with an error that names
    neither the sample nor the input; a DataError here says which sample and which input is wrong.
    """
    if calibration is None or len(calibration) == 0:
        raise DataError("calibration data is empty: at least one feed dict (input name -> array) is needed")
    inits = {i.name for i in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in inits}
    feeds: list[dict[str, np.ndarray]] = []
    for k, feed in enumerate(calibration):
        if not isinstance(feed, Mapping):
            kind = type(feed).__name__
            raise DataError(f"calibration sample {k} is a {kind}, expected a dict input -> array")
        missing = sorted(set(inputs) - set(feed))
        extra = sorted(set(feed) - set(inputs))
        if missing or extra:
            raise DataError(
                f"calibration sample {k} does not match the model inputs {sorted(inputs)}: "
                f"missing {missing}, unexpected {extra}"
            )
        clean: dict[str, np.ndarray] = {}
        for name, value in feed.items():
            arr = np.asarray(value)
            ttype = inputs[name].type.tensor_type
            want = _np_dtype(ttype.elem_type)
            if arr.dtype != want:
                where = f"calibration sample {k}, input {name!r}"
                raise DataError(f"{where}: dtype {arr.dtype}, the model expects {want}")
            if ttype.HasField("shape"):
                dims = ttype.shape.dim
                if arr.ndim != len(dims):
                    where = f"calibration sample {k}, input {name!r}"
                    raise DataError(f"{where}: rank {arr.ndim}, the model expects {len(dims)}")
                for axis, d in enumerate(dims):
                    if d.HasField("dim_value") and d.dim_value > 0 and arr.shape[axis] != d.dim_value:
                        raise DataError(
                            f"calibration sample {k}, input {name!r}: shape {arr.shape}, "
                            f"axis {axis} must be {d.dim_value}"
                        )
            clean[name] = arr
        feeds.append(clean)
    return feeds


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


# ------------------------------------------------------------------------------------ accuracy-driven


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


def _relocate(res: QuantResult, dst: Path) -> QuantResult:
    """Copy a search step's model to ``dst`` and return its result pointing there."""
    onnx, _ = _engine()
    dst = Path(dst)
    external = _uses_external_data(onnx.load(str(res.path), load_external_data=False))
    _copy_model(res.path, dst, external=external)
    return QuantResult(
        path=dst,
        scheme=res.scheme,
        per_channel=res.per_channel,
        op_types=list(res.op_types),
        float_nodes=list(res.float_nodes),
        calibration=res.calibration,
        notes=list(res.notes),
        search=list(res.search),
    )
