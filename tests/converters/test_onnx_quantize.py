"""INT8 quantization on the real onnxruntime tooling: operator choice, calibration, errors, search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgewise import device_runtime
from edgewise.converters import _onnx_quantize as q
from edgewise.converters._torch_export import export_torch_to_onnx
from edgewise.errors import ConversionError, DataError

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory, trained_digits_cnn) -> Path:
    path = tmp_path_factory.mktemp("q") / "cnn.onnx"
    export_torch_to_onnx(trained_digits_cnn, [np.zeros((2, 1, 8, 8), np.float32)], path,
                         input_names=["pixels"], output_names=["logits"])
    return path


@pytest.fixture(scope="module")
def calibration(digits_split):
    return [{"pixels": digits_split.train_x[i:i + 32]} for i in range(0, 128, 32)]


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def _agreement(a: Path, b: Path, x: np.ndarray) -> float:
    ya = device_runtime.load(a).run({"pixels": x})["logits"].argmax(1)
    yb = device_runtime.load(b).run({"pixels": x})["logits"].argmax(1)
    return float((ya == yb).mean())


def test_dynamic_keeps_convolutions_in_float_and_says_why(cnn_onnx, tmp_path, digits_split):
    result = q.quantize_dynamic_int8(cnn_onnx, tmp_path / "dyn.onnx")
    ops = _ops(result.path)
    assert "ConvInteger" not in ops and "Conv" in ops
    assert "MatMulInteger" in ops or "DynamicQuantizeLinear" in ops  # the linear layers are int8
    assert any("ConvInteger" in note for note in result.notes)
    assert {n for n in result.float_nodes if "Conv" in n}  # the convs are listed as kept in float
    assert _agreement(cnn_onnx, result.path, digits_split.test_x) > 0.95


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_qdq_quantizes_convolutions_with_calibration(cnn_onnx, tmp_path, calibration, method, digits_split):
    result = q.quantize_static_int8(cnn_onnx, tmp_path / f"{method}.onnx", calibration, method=method)
    assert result.scheme == "int8-static"
    assert result.calibration == {"method": method, "batches": 4, "samples": 128}
    assert "QuantizeLinear" in _ops(result.path) and "Conv" in result.op_types
    assert _agreement(cnn_onnx, result.path, digits_split.test_x) > 0.9


def test_calibration_data_problems_are_data_errors(cnn_onnx, tmp_path):
    x = np.zeros((4, 1, 8, 8), np.float32)
    with pytest.raises(DataError, match="calibration data is empty"):
        q.quantize_static_int8(cnn_onnx, tmp_path / "a.onnx", [])
    with pytest.raises(DataError, match=r"missing \['pixels'\], unexpected \['image'\]"):
        q.quantize_static_int8(cnn_onnx, tmp_path / "a.onnx", [{"image": x}])
    with pytest.raises(DataError, match="dtype float64"):
        q.quantize_static_int8(cnn_onnx, tmp_path / "a.onnx", [{"pixels": x.astype(np.float64)}])
    with pytest.raises(DataError, match="axis 2 must be 8"):
        q.quantize_static_int8(cnn_onnx, tmp_path / "a.onnx", [{"pixels": np.zeros((4, 1, 9, 8), np.float32)}])


def test_unreadable_source_is_a_conversion_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ConversionError, match="bad.onnx"):
        q.quantize_dynamic_int8(bad, tmp_path / "out.onnx")


def test_search_keeps_exactly_the_node_the_score_punishes(cnn_onnx, tmp_path, calibration):
    """A score that drops whenever one chosen node is quantized: the search must keep that node in float."""
    nodes = q.quantizable_nodes(cnn_onnx, ["Conv", "Gemm", "MatMul"])
    victim = next(n for n in nodes if "Conv" in n)

    def score(candidate: Path) -> float:
        graph = onnx.load(str(candidate)).graph
        victim_inputs = next(node.input for node in graph.node if node.name == victim)
        quantized = any("DequantizeLinear" in (p.op_type for p in graph.node if o in p.output)
                        for o in victim_inputs[1:2])
        return 0.5 if quantized else 1.0

    result = q.quantize_accuracy_driven(cnn_onnx, tmp_path / "auto.onnx", score=score, threshold=0.9,
                                        base="static", calibration=calibration, max_float_fraction=0.5)
    assert victim in result.float_nodes
    assert len(result.float_nodes) <= 2
    assert result.search and result.search[0]["score"] == 0.5


def test_search_that_cannot_reach_its_threshold_says_how_close_it_got(cnn_onnx, tmp_path, calibration):
    with pytest.raises(ConversionError, match="could not reach score >= 2.0") as info:
        q.quantize_accuracy_driven(cnn_onnx, tmp_path / "x.onnx", score=lambda _: 1.0, threshold=2.0,
                                   base="static", calibration=calibration)
    assert "best score 1.00000" in str(info.value) and "hint:" in str(info.value)
