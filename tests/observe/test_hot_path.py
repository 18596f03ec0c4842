"""The observed request path itself, compiled (``ObservedCall``) and pure Python alike (``hot_path``
fixture, autouse here): failures counted under their class and raised unchanged, a full mailbox sheds
and counts, the shadow's rate follows attach/detach, nothing leaks."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgewise import device_runtime
from edgewise.device_runtime import Metrics, observed
from edgewise.errors import InferenceError, InputError


@pytest.fixture(scope="module")
def reshape_onnx(tmp_path_factory):
    """x float[n] -> y float[2, 2]: validation accepts any n, the engine itself fails unless n == 4."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [numpy_helper.from_array(np.array([2, 2], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("reshape") / "reshape.onnx"
    onnx.save(model, path)
    return path


def test_the_requested_path_runs(mlp_onnx, hot_path):
    watched = observed(device_runtime.load(mlp_onnx), metrics=Metrics(), sample_rate=0.0)
    assert watched.hot_path == hot_path
    watched.close()


def test_failures_are_counted_by_class_and_raised_unchanged(reshape_onnx, tmp_path):
    metrics = Metrics()
    watched = observed(device_runtime.load(reshape_onnx, warmup=False), directory=tmp_path / "obs",
                       metrics=metrics, sample_rate=1.0)
    np.testing.assert_array_equal(watched.run({"x": np.arange(4, dtype=np.float32)})["y"], [[0, 1], [2, 3]])
    with pytest.raises(InferenceError, match="Reshape"):  # the engine's own failure
        watched.run({"x": np.ones(3, np.float32)})
    with pytest.raises(InputError, match="x"):  # refused before the engine
        watched.run({"x": np.ones((2, 2), np.float32)})
    with pytest.raises(TypeError):  # a wrong call is the caller's bug, not a failed request
        watched.run()
    watched.flush()
    (series,) = metrics.snapshot()["models"]
    assert series["requests"] == 1 and series["errors"] == {"InferenceError": 1, "InputError": 1}
    assert watched.sampled == 1  # failed requests are not sampled
    watched.close()


def test_a_full_mailbox_sheds_and_counts_without_blocking(mlp_onnx):
    # The worker sleeps for a minute unless flushed: 4 fit in the mailbox, the other 16 are shed.
    watched = observed(device_runtime.load(mlp_onnx), metrics=Metrics(), sample_rate=1.0, queue_size=4,
                       flush_interval_s=60.0)
    x = {"x": np.ones((1, 16), np.float32)}
    for _ in range(20):
        watched.run(x)
    assert watched.shed == 16
    watched.flush()
    assert watched.sampled == 4
    watched.close()


def test_the_shadow_rate_follows_attach_and_detach(mlp_onnx):
    model = device_runtime.load(mlp_onnx)
    watched = observed(model, metrics=Metrics(), sample_rate=0.0)
    x = {"x": np.ones((1, 16), np.float32)}
    runner = watched.attach_shadow(device_runtime.load(mlp_onnx), rate=1.0)
    for _ in range(10):
        watched.run(x)
    runner.drain()
    assert runner.metrics()["offered"] == 10 and runner.metrics()["samples"] == 10
    watched.detach_shadow()
    for _ in range(10):
        watched.run(x)
    assert runner.metrics()["offered"] == 10 and watched.sampled == 0  # neither shadow nor log after detach
    watched.close()


def test_a_closed_observed_model_is_collected(mlp_onnx):
    # run refers back to the wrapper (mailbox, series): a reference cycle the collector must be able to see
    watched = observed(device_runtime.load(mlp_onnx), metrics=Metrics(), sample_rate=1.0)
    watched.run({"x": np.ones((1, 16), np.float32)})
    watched.close()
    gone = weakref.ref(watched)
    del watched
    gc.collect()
    assert gone() is None
