"""Ranking accelerators for a request: pure, so every hardware combination is testable here."""

from __future__ import annotations

import pytest

from edgewise.device_runtime import Accelerator, rank
from edgewise.errors import PlacementError

CPU = Accelerator("ort", "CPUExecutionProvider", "cpu", "cpu")
CUDA = Accelerator("ort", "CUDAExecutionProvider", "gpu", "cuda")
TRT = Accelerator("ort", "TensorrtExecutionProvider", "gpu", "tensorrt")
QNN = Accelerator("ort", "QNNExecutionProvider", "npu", "qnn")
XNN = Accelerator("ort", "XnnpackExecutionProvider", "cpu", "xnnpack", auto=False)
PHONE = [CPU, XNN, QNN]
SERVER = [TRT, CUDA, CPU]


def names(items):
    return [a.alias for a in items]


def test_auto_prefers_npu_then_gpu_then_cpu_and_skips_non_auto():
    assert names(rank(PHONE, "auto")) == ["qnn", "cpu"]
    assert names(rank(SERVER, "auto")) == ["tensorrt", "cuda", "cpu"]
    assert names(rank([CPU], "auto")) == ["cpu"]


def test_kind_request_keeps_cpu_as_last_resort_unless_strict():
    assert names(rank(SERVER, "gpu")) == ["tensorrt", "cuda", "cpu"]
    assert names(rank(SERVER, "gpu", strict=True)) == ["tensorrt", "cuda"]
    assert names(rank([CPU], "gpu")) == ["cpu"]
    with pytest.raises(PlacementError, match="no GPU accelerator"):
        rank([CPU], "gpu", strict=True)


def test_named_accelerator_by_alias_or_engine_name():
    assert names(rank(SERVER, "cuda")) == ["cuda", "cpu"]
    assert names(rank(SERVER, "CUDAExecutionProvider", strict=True)) == ["cuda"]
    assert names(rank(PHONE, "xnnpack")) == ["xnnpack", "cpu"]  # non-auto ones run when named


def test_known_accelerator_missing_here_falls_back_but_strict_refuses():
    assert names(rank([CPU], "cuda")) == ["cpu"]
    with pytest.raises(PlacementError, match="'cuda' is not available here"):
        rank([CPU], "cuda", strict=True)


def test_unknown_device_name_is_an_error_listing_choices():
    with pytest.raises(PlacementError, match="not available here") as info:
        rank(SERVER, "tpu-v9")
    assert "auto" in info.value.hint and "cuda" in info.value.hint


def test_cpu_request():
    assert names(rank(SERVER, "cpu")) == ["cpu"]
