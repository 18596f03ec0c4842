"""The router on a real tensor model: the digits MLP as an ONNX bundle on the device, MLServer as the cloud."""

from __future__ import annotations

import numpy as np
import pytest

from edgewise import device_runtime
from edgewise.errors import InputError, OnDeviceRefusedError
from edgewise.fallback import Endpoint, Router, RouterConfig

pytestmark = pytest.mark.slow


@pytest.fixture
def router(mlserver, digits_weights):
    model = device_runtime.load(digits_weights["bundle"])
    config = RouterConfig(tensor=Endpoint(mlserver, protocol="kserve", model="digits"), deadline_s=30)
    with Router(config, tensor_model=model) as r:
        yield r


def test_small_batch_on_device_large_batch_in_the_cloud_same_answers(router, digits_weights):
    x, y = digits_weights["x"], digits_weights["y"]
    small = router.infer({"pixels": x[:8]})
    assert (small.served_by, small.reason) == ("device", "fits_device")
    large = router.infer({"pixels": x[:200]})
    assert (large.served_by, large.reason) == ("cloud", "input_too_large")
    assert "the bundle's limit of 2048" in large.served.detail
    np.testing.assert_allclose(large.outputs["logits"][:8], small.outputs["logits"], rtol=1e-4, atol=1e-4)
    assert (large.outputs["logits"].argmax(1) == y[:200]).mean() > 0.85


def test_only_on_device_refuses_a_batch_over_the_limit(router, digits_weights):
    with pytest.raises(OnDeviceRefusedError) as info:
        router.infer({"pixels": digits_weights["x"][:9]}, mode="only_on_device")
    assert info.value.reason == "input_too_large"


def test_wrong_dtype_is_the_callers_error_not_a_reason_to_leave(router, digits_weights):
    with pytest.raises(InputError):
        router.infer({"pixels": digits_weights["x"][:2].astype(np.float64)})


def test_lazy_bundle_path_is_loaded_on_first_device_request(mlserver, digits_weights):
    config = RouterConfig(tensor=Endpoint(mlserver, protocol="kserve", model="digits"))
    with Router(config, tensor_model=digits_weights["bundle"]) as r:
        first = r.infer({"pixels": digits_weights["x"][:4]})
        assert first.served_by == "device"
        assert r.infer({"pixels": digits_weights["x"][:100]}).served_by == "cloud"
