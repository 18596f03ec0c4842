"""PyTorch ``nn.Module`` -> Core ML ``.mlpackage`` (ML program) with coremltools, and its compressed variants.

* ``fp32`` / ``fp16``: ``ct.convert(torch.jit.trace(...), convert_to="mlprogram")`` with FLOAT32 or
  FLOAT16 compute precision (``torch.export`` programs failed to convert here; tracing works).
  The batch dimension is flexible (``ct.RangeDim``) when the traced graph allows it.
* ``int8-weight-only``: ``linear_quantize_weights`` (symmetric int8), float16 compute.
* ``palettized4``: ``palettize_weights`` with a 4-bit k-means lookup table (needs scikit-learn), float16 compute.

The deployment target is the lowest the variant needs (mlprogram: iOS15; compressed weights: iOS16)
unless the recipe asks for a later one; asking for an earlier one than needed is an error.
Accuracy cannot be measured here (Core ML predicts only on macOS): ``checks`` records what was
verified without running (spec readable, input/output names and shapes, weight storage, size).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.errors import ConversionError, RecipeError

TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15")
_NEEDS = {"fp32": "iOS15", "fp16": "iOS15", "int8-weight-only": "iOS16", "palettized4": "iOS16"}
_MISSING_OP = re.compile(r"convert function for op '([^']+)' not implemented")
_FAILED_OP = re.compile(r"converting '([^']+)' op")


def deployment_target(variant: str, requested: str | None) -> str:
    """The target for ``variant``: the recipe's, or the lowest that supports the variant's weights."""
    need = _NEEDS[variant]
    if requested is None:
        return need
    if requested not in TARGETS:
        raise RecipeError(f"coreml deployment_target {requested!r} is not one of {', '.join(TARGETS)}")
    if _rank(requested) < _rank(need):
        raise RecipeError(f"coreml/{variant} needs deployment_target {need} or later (compressed weights); "
                          f"the recipe asks for {requested}")
    return requested


def _rank(target: str) -> int:
    # iOS15 ~ macOS12, iOS16 ~ macOS13, ... (same Core ML specification versions)
    number = int(re.sub(r"\D", "", target))
    return number if target.startswith("iOS") else number + 3


def export(module, sample: dict[str, np.ndarray], input_names: Sequence[str], output_names: Sequence[str],
           dest: Path, *, variant: str, target: str) -> Path:
    """Convert ``module`` into ``dest`` (an ``.mlpackage`` directory) as ``variant``."""
    import coremltools as ct
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(sample[n][:1])) for n in input_names)
    # Compressed variants run in float16 (coremltools' default for ML programs, what the Neural Engine computes in).
    precision = ct.precision.FLOAT32 if variant == "fp32" else ct.precision.FLOAT16
    with _quiet(), _converter_errors(variant) as log:
        traced = torch.jit.trace(module.eval(), args)
        outputs = [ct.TensorType(name=n) for n in output_names]
        model = None
        for flexible in (True, False):  # a flexible batch first; fixed shapes if the graph refuses it
            shapes = [(ct.RangeDim(1, 1024, default=1), *a.shape[1:]) if flexible else tuple(a.shape) for a in args]
            inputs = [ct.TensorType(name=n, shape=s, dtype=np.float32) for n, s in zip(input_names, shapes,
                                                                                       strict=True)]
            try:
                model = ct.convert(traced, inputs=inputs, outputs=outputs, convert_to="mlprogram",
                                   compute_precision=precision, minimum_deployment_target=getattr(ct.target, target),
                                   skip_model_load=True)
                break
            except Exception as exc:
                if flexible:
                    first, first_ops = exc, list(log.ops)
                    continue
                # Both failed: the flexible attempt's error names the model's own problem (the fixed one
                # can trip earlier on traced shape arithmetic).
                log.ops[:] = first_ops
                raise first from exc
        assert model is not None
        if variant == "int8-weight-only":
            import coremltools.optimize.coreml as cto

            config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric",
                                                                                      dtype="int8"))
            model = cto.linear_quantize_weights(model, config)
        elif variant == "palettized4":
            import coremltools.optimize.coreml as cto

            config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=4))
            model = cto.palettize_weights(model, config)
        shutil.rmtree(dest, ignore_errors=True)
        model.save(str(dest))
    return dest


def checks(path: Path, input_names: Sequence[str], output_names: Sequence[str], variant: str,
           target: str) -> dict[str, Any]:
    """What was verified without running Core ML, and what was not (recorded in the manifest)."""
    from edgewise.device_runtime._coreml import CoreMLBackend

    info = CoreMLBackend().inspect(path)
    signature = info["signature"]
    names_in = [s.name for s in signature.inputs]
    names_out = [s.name for s in signature.outputs]
    if names_in != list(input_names) or names_out != list(output_names):
        raise ConversionError(f"coreml/{variant}: the package's inputs {names_in} / outputs {names_out} differ from "
                              f"the recipe's {list(input_names)} / {list(output_names)}")
    weight_ops = info["weight_ops"]
    compressed = variant in ("int8-weight-only", "palettized4")
    if compressed and not any(op.startswith("constexpr_") for op in weight_ops):
        raise ConversionError(f"coreml/{variant}: no compressed weights in the package (weight ops: {weight_ops})")
    return {
        "checked": {
            "spec_readable": True,
            "model_type": info["model_type"],
            "specification_version": info["specification_version"],
            "deployment_target": target,
            "inputs": [s.to_dict() for s in signature.inputs],
            "outputs": [s.to_dict() for s in signature.outputs],
            "names_match_recipe": True,
            "compute_precision": "float32" if variant == "fp32" else "float16",
            "weight_ops": weight_ops,
            "size_bytes": tree_size(path),
        },
        "not_checked": ["accuracy against the source model (Core ML predicts only on macOS)",
                        "latency", "which compute unit (CPU / GPU / Neural Engine) runs each layer"],
    }


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


class _OpLog(logging.Handler):
    """coremltools logs "converting 'linalg_det' op" before re-raising the frontend's error without the name."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.ops: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = _FAILED_OP.search(record.getMessage())
        if match:
            self.ops.append(match.group(1))


@contextlib.contextmanager
def _converter_errors(variant: str):
    log = _OpLog()
    logger = logging.getLogger("coremltools")
    logger.addHandler(log)
    try:
        yield log
    except ConversionError:
        raise
    except Exception as exc:
        match = _MISSING_OP.search(str(exc))
        if not match and log.ops:
            match = _FAILED_OP.search(f"converting '{log.ops[-1]}' op")
        if match:
            raise ConversionError(
                f"coreml/{variant}: coremltools cannot convert operator {match.group(1)} to Core ML",
                hint="Replace that operator in the model, or drop the coreml target; the other targets are built.",
            ) from exc
        text = str(exc).strip().splitlines()
        raise ConversionError(f"coreml/{variant}: coremltools conversion failed: "
                              f"{(text[0] if text else type(exc).__name__)[:300]}") from exc
    finally:
        logger.removeHandler(log)
