"""KServe v2 / Open Inference Protocol over REST (Triton, KServe, MLServer, Seldon).

``/v2/health/ready``, ``/v2/models/{m}[/versions/{v}]`` (metadata), ``.../ready`` and ``.../infer``
with tensors as JSON (``name``, ``shape``, ``datatype``, row-major flattened ``data``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from edgewise.errors import CloudResponseError, InputError
from edgewise.fallback._http import ResilientHTTP
from edgewise.fallback._resilience import Deadline
from edgewise.fallback.config import Endpoint

# numpy dtype name <-> v2 datatype
_TO_V2 = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
          "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
          "float16": "FP16", "float32": "FP32", "float64": "FP64"}
_FROM_V2 = {v: k for k, v in _TO_V2.items()}


class KServeClient:
    protocol = "kserve"

    def __init__(self, endpoint: Endpoint, *, transport: httpx.BaseTransport | None = None) -> None:
        self.endpoint = endpoint
        self.http = ResilientHTTP(endpoint, transport=transport)
        model = endpoint.model
        if not model:
            from edgewise.errors import FallbackConfigError

            raise FallbackConfigError(f"{endpoint.name}: a KServe endpoint needs the model name (model = ...)")
        self._model_path = f"/v2/models/{model}" + (f"/versions/{endpoint.model_version}"
                                                    if endpoint.model_version else "")

    def ready(self, deadline: Deadline) -> bool:
        """Server ready and this model ready (both answer 200 with an empty or {"ready": true} body)."""
        self.http.request("GET", "/v2/health/ready", deadline=deadline)
        body = self.http.request("GET", f"{self._model_path}/ready", deadline=deadline)
        return not isinstance(body, dict) or body.get("ready", True) is not False

    def metadata(self, deadline: Deadline) -> dict[str, Any]:
        body = self.http.request("GET", self._model_path, deadline=deadline)
        if not isinstance(body, dict) or "inputs" not in body:
            raise CloudResponseError(f"{self.endpoint.name}{self._model_path}: not v2 model metadata",
                                     endpoint=self.endpoint.name)
        return body

    def infer(self, inputs: dict[str, np.ndarray], *, deadline: Deadline,
                    outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        body: dict[str, Any] = {"inputs": [encode(name, array) for name, array in inputs.items()]}
        if outputs:
            body["outputs"] = [{"name": name} for name in outputs]
        path = f"{self._model_path}/infer"
        answer = self.http.request("POST", path, deadline=deadline, json=body)
        try:
            return {t["name"]: decode(t) for t in answer["outputs"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise CloudResponseError(f"{self.endpoint.name}{path}: not a v2 inference answer: {str(answer)[:200]}",
                                     endpoint=self.endpoint.name) from exc


def encode(name: str, array: np.ndarray) -> dict[str, Any]:
    array = np.asarray(array)
    datatype = _TO_V2.get(array.dtype.name)
    if datatype is None:
        raise InputError(f"input {name}: dtype {array.dtype} has no KServe v2 datatype",
                         hint=f"Use one of {', '.join(_TO_V2)}.")
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.ravel().tolist()}


def decode(tensor: dict[str, Any]) -> np.ndarray:
    dtype = _FROM_V2[tensor["datatype"]]
    return np.asarray(tensor["data"], dtype=dtype).reshape(tensor["shape"])
