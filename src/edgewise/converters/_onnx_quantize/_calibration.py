"""Calibration feed checks shared by static quantization, dynamic smoothing and the accuracy-driven search."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgewise.errors import DataError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnx


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
