"""ONNX graph plumbing shared by every quantization mode: the lazy engine import, loading, saving and
copying models (external data included), node naming, weight/initializer lookups, the Gemm -> MatMul
rewrite, reading back what was quantized, and :class:`QuantResult`."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgewise.errors import ConversionError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnx

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
