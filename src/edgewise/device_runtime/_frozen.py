"""Copies of a sampled request that the caller's later writes cannot reach, cheap on the caller's thread.

Observation copies a sampled request before ``run`` returns (the caller may refill its buffers
at once: a camera loop does) and hands it to background workers (prediction log, shadow). That copy
runs cold, after the engine has evicted the caches, so it is the shortest numpy path: bytes plus
dtype and shape. The workers turn it back into read-only arrays (``thawed``).

``ObservedModel.run`` writes the dict-of-arrays case of ``frozen`` out inline (a call costs µs
there), in C (``_observed_call.c``, ``frozen_array``) and in its Python closure; the tuples must stay
the same as ``_frozen_array``'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def frozen(tensors: Any) -> list[tuple] | None:
    """A copy of a request's arrays that later writes to the caller's buffers cannot reach, or None
    when ``tensors`` is not an array or a dict of arrays (the caller validates and freezes that).

    Each array becomes ``(name, bytes, dtype, shape)`` (``ndarray.tobytes``: numpy's shortest copy
    path, ~40 % cheaper in place than ``np.array``); a bare array gets the name None. Object arrays
    (strings as Python objects) hold pointers, not data: those are copied as arrays, dtype None.
    """
    if type(tensors) is np.ndarray:
        return [_frozen_array(None, tensors)]
    if type(tensors) is dict:
        try:
            return [_frozen_array(name, value) for name, value in tensors.items()]
        except AttributeError:  # a value that is not an array (a list, say)
            return None
    return None


def _frozen_array(name: str | None, value: np.ndarray) -> tuple:
    if value.dtype.hasobject:
        return name, value.copy(), None, value.shape
    return name, value.tobytes(), value.dtype, value.shape


def thawed(copy: list[tuple]) -> Any:
    """``frozen``'s inverse, on the worker: read-only arrays over the copied bytes."""
    arrays = {name: data if dtype is None else np.frombuffer(data, dtype=dtype).reshape(shape)
              for name, data, dtype, shape in copy}
    return arrays.get(None, arrays)
