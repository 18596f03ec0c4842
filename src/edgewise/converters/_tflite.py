"""PyTorch ``nn.Module`` -> ``.tflite`` with litert-torch (no TensorFlow), and its INT8 variants.

* ``fp32``: ``litert_torch.convert``. Shapes are fixed (litert-torch could not lower a dynamic batch
  through Flatten/MaxPool here), so the model is exported at batch 1 and the LiteRT backend runs
  larger batches sample by sample, as an on-device app does.
* ``int8-static``: PT2E static quantization (litert-torch's quantizer, torchao prepare/convert),
  calibrated on the recipe's data: int8 weights *and* activations, int8 input/output tensors.
* ``int8-dynamic`` / ``int8-weight-only``: ai-edge-quantizer recipes on the float ``.tflite``
  (``dynamic_wi8_afp32``, ``weight_only_wi8_afp32``); no calibration. Dynamic-range convolutions
  ran ~2x slower than float on XNNPACK here: the pipeline times every variant and says so.

The exported signature uses the recipe's input and output names (the module is wrapped so its
keyword arguments and output dict carry them), so the same feeds run the ONNX and TFLite artifacts.
"""

from __future__ import annotations

import contextlib
import io
import keyword
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.errors import ConversionError

_LOWERING = re.compile(r"Lowering not found: (\S+)")
RECIPES = {"int8-dynamic": "dynamic_wi8_afp32", "int8-weight-only": "weight_only_wi8_afp32"}


def export_float(module, sample: dict[str, np.ndarray], input_names: Sequence[str], output_names: Sequence[str],
                 dest: Path) -> Path:
    """Float ``.tflite`` at batch 1; ConversionError names an operator litert-torch cannot lower."""
    import litert_torch

    wrapped = named_module(module, input_names, output_names)
    kwargs = _batch1(sample, input_names)
    with _quiet(), _converter_errors("fp32"):
        litert_torch.convert(wrapped, sample_kwargs=kwargs).export(str(dest))
    return dest


def quantize_static_int8(module, calibration: Sequence[dict[str, np.ndarray]], input_names: Sequence[str],
                         output_names: Sequence[str], dest: Path, *, per_channel: bool = True,
                         max_samples: int = 256) -> dict[str, Any]:
    """Full INT8 (weights and activations) by PT2E calibration: int8 input/output tensors."""
    import litert_torch
    import torch
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize import quant_config as qc
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    wrapped = named_module(module, input_names, output_names)
    sample = _batch1(calibration[0], input_names)
    config = pq.get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=False)
    quantizer = pq.PT2EQuantizer().set_global(config)
    seen = 0
    with _quiet(), _converter_errors("int8-static"):
        # Calibrate with whole batches through a dynamic-batch export (torch.export handles it; only the
        # TFLite lowering needs fixed shapes); the converted graph is lowered at batch 1 below.
        dynamic = {n: {0: torch.export.Dim("batch", min=1, max=4096)} for n in input_names}
        step = max(1, next(iter(calibration[0].values())).shape[0])
        try:
            exported = torch.export.export(wrapped, (), _batch(calibration[0], input_names, 2),
                                           dynamic_shapes=dynamic).module()
        except Exception:  # a graph with batch-specific shapes: calibrate sample by sample
            exported, step = torch.export.export(wrapped, (), sample).module(), 1
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for batch in calibration:
                count = next(iter(batch.values())).shape[0]
                for i in range(0, count, step):
                    take = min(step, max_samples - seen)
                    prepared(**{n: torch.from_numpy(np.ascontiguousarray(batch[n][i:i + take])) for n in input_names})
                    seen += take
                    if seen >= max_samples:
                        break
                if seen >= max_samples:
                    break
        converted = convert_pt2e(prepared, fold_quantize=False)
        litert_torch.convert(converted, sample_kwargs=sample,
                             quant_config=qc.QuantConfig(pt2e_quantizer=quantizer)).export(str(dest))
    return {"method": "pt2e-minmax", "samples": seen, "per_channel": per_channel}


def quantize_with_recipe(float_path: Path, dest: Path, variant: str) -> dict[str, Any]:
    """ai-edge-quantizer on the float ``.tflite``: ``int8-dynamic`` or ``int8-weight-only``."""
    from ai_edge_quantizer import quantizer, recipe

    name = RECIPES[variant]
    try:
        with _quiet():
            q = quantizer.Quantizer(str(float_path))
            q.load_quantization_recipe(getattr(recipe, name)())
            q.quantize().export_model(str(dest), overwrite=True)
    except Exception as exc:
        raise ConversionError(f"ai-edge-quantizer recipe {name} failed on {float_path.name}: {_short(exc)}",
                              hint="Use the tflite int8-static variant, or keep this model in float.") from exc
    return {"recipe": name}


def named_module(module, input_names: Sequence[str], output_names: Sequence[str]):
    """``module`` with keyword arguments named like the recipe's inputs and a dict output named like its outputs.

    litert-torch names the ``.tflite`` signature after these, so the artifact takes the same feeds as
    the ONNX export.
    """
    import torch

    for name in input_names:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ConversionError(f"input name {name!r} cannot name a TFLite signature argument",
                                  hint="Use Python identifiers for model.input_names.")
    params = ", ".join(input_names)
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {params}):\n    return self._pack(self.inner({params}))\n", namespace)

    class Named(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module.eval()

        def _pack(self, out):
            if isinstance(out, torch.Tensor):
                out = (out,)
            elif isinstance(out, dict):
                out = tuple(out.values())
            return dict(zip(output_names, out, strict=False))

    Named.forward = namespace["forward"]
    return Named().eval()


def _batch1(sample: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, Any]:
    return _batch(sample, names, 1)


def _batch(sample: dict[str, np.ndarray], names: Sequence[str], size: int) -> dict[str, Any]:
    import torch

    return {n: torch.from_numpy(np.ascontiguousarray(np.concatenate([sample[n]] * size)[:size])) for n in names}


@contextlib.contextmanager
def _quiet():
    """litert-torch and ai-edge-quantizer print progress on stdout; the pipeline has its own."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _converter_errors(variant: str):
    try:
        yield
    except ConversionError:
        raise
    except Exception as exc:
        match = _LOWERING.search(str(exc))
        if match:
            raise ConversionError(
                f"tflite/{variant}: litert-torch cannot lower operator {match.group(1)} to TFLite",
                hint="Replace that operator in the model, or drop the tflite target; the other targets are built.",
            ) from exc
        raise ConversionError(f"tflite/{variant}: litert-torch conversion failed: {_short(exc)}") from exc


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
