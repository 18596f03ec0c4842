"""Input validation: every mismatch is an InputError naming the input and what was expected."""

from __future__ import annotations

import numpy as np
import pytest

from edgewise.bundle import TensorSpec
from edgewise.device_runtime import InputValidator
from edgewise.errors import InputError

SPECS = (TensorSpec("ids", "int64", ("batch", "seq")), TensorSpec("img", "float32", ("batch", 3, 4)))


def ok_inputs():
    return {"ids": np.zeros((2, 5), np.int64), "img": np.zeros((2, 3, 4), np.float32)}


def test_accepts_dict_and_sequence():
    check = InputValidator(SPECS)
    assert set(check(ok_inputs())) == {"ids", "img"}
    assert set(check(list(ok_inputs().values()))) == {"ids", "img"}


def test_single_array_for_single_input_models():
    check = InputValidator(SPECS[1:])
    assert check(np.zeros((1, 3, 4), np.float32))["img"].shape == (1, 3, 4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"img": np.zeros((2, 3, 4), np.float64)}, "'img' has dtype float64, the model expects float32"),
        ({"img": np.zeros((2, 3, 5), np.float32)}, r"dimension 2 must be 4"),
        ({"img": np.zeros((3, 4), np.float32)}, r"\(2 dims\), the model expects \[batch, 3, 4\] \(3 dims\)"),
        ({"ids": np.zeros((2, 5), np.int32)}, "'ids' has dtype int32"),
    ],
)
def test_wrong_dtype_or_shape(change, message):
    inputs = {**ok_inputs(), **change}
    with pytest.raises(InputError, match=message):
        InputValidator(SPECS)(inputs)


def test_wrong_names():
    inputs = ok_inputs()
    inputs["image"] = inputs.pop("img")
    with pytest.raises(InputError, match=r"missing \['img'\], unexpected \['image'\]"):
        InputValidator(SPECS)(inputs)
    with pytest.raises(InputError, match="missing"):
        InputValidator(SPECS)({"ids": inputs["ids"]})


def test_wrong_container():
    with pytest.raises(InputError, match="inputs must be a dict of 2 arrays"):
        InputValidator(SPECS)(np.zeros(3))


def test_dtype_hint_says_how_to_fix():
    with pytest.raises(InputError) as info:
        InputValidator(SPECS)({**ok_inputs(), "img": np.zeros((2, 3, 4), np.float64)})
    assert "astype(numpy.float32)" in str(info.value)
