"""Manifest parsing: every malformed field is refused with an error naming it."""

from __future__ import annotations

import copy

import pytest

from edgewise.bundle import SCHEMA_VERSION, Manifest
from edgewise.errors import ManifestError

SHA = "a" * 64


def valid() -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "edgewise_version": "0.1.0",
        "name": "m",
        "version": "1.0.0",
        "format": "onnx",
        "task": "classification",
        "entrypoint": "model.onnx",
        "files": [
            {"path": "model.onnx", "sha256": SHA, "size": 10, "role": "model"},
            {"path": "sample/inputs_0.npy", "sha256": SHA, "size": 5, "role": "sample"},
            {"path": "sample/outputs_0.npy", "sha256": SHA, "size": 5, "role": "sample"},
        ],
        "signature": {
            "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 3]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}],
        },
        "quantization": {"scheme": "int8-dynamic", "float_nodes": ["n1"]},
        "source": {"kind": "pytorch", "digest": "sha256:" + SHA},
        "sample": {"inputs": {"x": "sample/inputs_0.npy"}, "outputs": {"y": "sample/outputs_0.npy"}},
        "metrics": {"gate": {"passed": True}},
        "limits": {"context_length": 2048},
    }


def test_round_trip_is_exact():
    manifest = Manifest.from_dict(valid())
    again = Manifest.from_dict(manifest.to_dict())
    assert again == manifest
    assert again.signature.inputs[0].shape == ("batch", 3)
    assert again.quantization.float_nodes == ("n1",)
    assert manifest.size_bytes == 10  # sample files are not model bytes


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("files"), "missing required field 'files'"),
        (lambda d: d.pop("signature"), "missing required field 'signature'"),
        (lambda d: d.update(format="safetensors"), "unknown format 'safetensors'"),
        (lambda d: d.update(task="dancing"), "unknown task 'dancing'"),
        (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "newer than this edgewise"),
        (lambda d: d.update(schema_version=True), "must be an integer"),
        (lambda d: d["files"][0].update(sha256="XYZ"), "not a lowercase hex sha256"),
        (lambda d: d["files"][0].update(size=-1), "negative size"),
        (lambda d: d["files"][0].update(path="../etc/passwd"), "relative path inside the bundle"),
        (lambda d: d["files"][0].update(path="/abs/model.onnx"), "relative path inside the bundle"),
        (lambda d: d.update(entrypoint="other.onnx"), "not among manifest.files"),
        (lambda d: d["files"].append(dict(d["files"][0])), "twice"),
        (lambda d: d["signature"]["inputs"][0].update(dtype="float33"), "unknown dtype 'float33'"),
        (lambda d: d["signature"]["inputs"][0].update(shape=[-2]), "neither a size"),
        (lambda d: d["sample"]["inputs"].update(x="sample/nope.npy"), "which manifest.files does not list"),
        (lambda d: d.update(files=[]), "files is empty"),
        (lambda d: d.update(metrics=[1]), "metrics must be an object"),
    ],
)
def test_invalid_fields_are_named(mutate, message):
    data = copy.deepcopy(valid())
    mutate(data)
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Manifest.from_dict(data)


def test_not_an_object():
    with pytest.raises(ManifestError, match="must be an object"):
        Manifest.from_dict([1, 2])


def test_text_generation_bundle_needs_no_tensor_signature():
    data = valid()
    data.update(format="gguf", task="text-generation", entrypoint="model.gguf", sample=None,
                signature={"inputs": [], "outputs": []})
    data["files"] = [{"path": "model.gguf", "sha256": SHA, "size": 10}]
    manifest = Manifest.from_dict(data)
    assert manifest.limits["context_length"] == 2048
