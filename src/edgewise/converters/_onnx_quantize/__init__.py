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

Layout (one job per module; everything public is re-exported here):

* ``_graph`` -- lazy onnx/onnxruntime import, model load/save/copy, node names, weight lookups,
  the Gemm -> MatMul rewrite, reading back what was quantized, :class:`QuantResult`.
* ``_calibration`` -- checks calibration feed dicts against the model signature.
* ``_smoothing`` -- SmoothQuant-style activation smoothing and ``SMOOTH_ALPHAS``.
* ``dynamic`` -- :func:`quantize_dynamic_int8` and ``DYNAMIC_DEFAULT_OP_TYPES``.
* ``static`` -- :func:`quantize_static_int8`, ``STATIC_DEFAULT_OP_TYPES``, ``CALIBRATION_METHODS``.
* ``search`` -- :func:`quantize_accuracy_driven`.

onnx / onnxruntime are imported lazily: importing this module must not require the ONNX extra.
"""

from __future__ import annotations

from edgewise.converters._onnx_quantize._graph import QuantResult, quantizable_nodes
from edgewise.converters._onnx_quantize._smoothing import SMOOTH_ALPHAS
from edgewise.converters._onnx_quantize.dynamic import DYNAMIC_DEFAULT_OP_TYPES, quantize_dynamic_int8
from edgewise.converters._onnx_quantize.search import quantize_accuracy_driven
from edgewise.converters._onnx_quantize.static import (
    CALIBRATION_METHODS,
    STATIC_DEFAULT_OP_TYPES,
    quantize_static_int8,
)

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
