"""Bundles on disk: built atomically, verified on open, refused with a named error when damaged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgewise.bundle import Bundle, BundleBuilder, Manifest, Quantization, Signature, Source, TensorSpec
from edgewise.errors import BundleNotFoundError, IntegrityError, ManifestError


def _manifest() -> Manifest:
    return Manifest(
        name="toy", version="1.0.0", format="onnx", task="regression", entrypoint="model.onnx", files=(),
        signature=Signature(inputs=(TensorSpec("x", "float32", ("batch", 2)),),
                            outputs=(TensorSpec("y", "float32", ("batch", 1)),)),
        quantization=Quantization(), source=Source(kind="onnx", digest="sha256:" + "0" * 64), edgewise_version="",
    )


@pytest.fixture
def bundle(tmp_path):
    model = tmp_path / "src.onnx"
    model.write_bytes(b"\x08\x07" + bytes(range(200)))
    builder = BundleBuilder()
    builder.add_file(model, "model.onnx")
    builder.add_sample({"x": np.ones((1, 2), np.float32)}, {"y": np.full((1, 1), 3.0, np.float32)})
    return builder.write(tmp_path / "toy", _manifest())


def test_write_then_open_verifies(bundle):
    opened = Bundle.open(bundle.root)
    assert opened.manifest == bundle.manifest
    assert {f.path for f in opened.manifest.files} == {"model.onnx", "sample/inputs_0.npy", "sample/outputs_0.npy"}
    assert opened.manifest.edgewise_version and opened.manifest.created
    inputs, outputs = opened.load_sample()
    assert inputs["x"].shape == (1, 2) and float(outputs["y"][0, 0]) == 3.0


def test_tampered_file_is_refused(bundle):
    path = bundle.root / "model.onnx"
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="'model.onnx' has sha256") as info:
        Bundle.open(bundle.root)
    assert info.value.path == "model.onnx"


def test_truncated_file_is_refused(bundle):
    path = bundle.root / "model.onnx"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(IntegrityError, match="has 50 bytes, the manifest says 202"):
        Bundle.open(bundle.root)


def test_missing_file_is_refused(bundle):
    (bundle.root / "sample" / "outputs_0.npy").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        Bundle.open(bundle.root)


def test_wrong_hash_in_manifest_is_refused(bundle):
    manifest_path = bundle.root / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["files"][0]["sha256"] = "b" * 64
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match="corrupted or tampered"):
        Bundle.open(bundle.root)


def test_manifest_missing_field_and_bad_json(bundle):
    manifest_path = bundle.root / "manifest.json"
    data = json.loads(manifest_path.read_text())
    del data["source"]
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="missing required field 'source'"):
        Bundle.open(bundle.root)
    manifest_path.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Bundle.open(bundle.root)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleNotFoundError, match="no manifest.json"):
        Bundle.open(tmp_path)


def test_rewrite_replaces_atomically_and_leaves_no_staging(bundle, tmp_path):
    builder = BundleBuilder()
    builder.add_bytes(b"new model bytes", "model.onnx", role="model")
    rewritten = builder.write(bundle.root, _manifest())
    assert rewritten.manifest.files[0].size == len(b"new model bytes")
    assert Bundle.open(bundle.root).manifest.sample is None
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_builder_refuses_paths_outside_the_bundle():
    with pytest.raises(ManifestError, match="relative path"):
        BundleBuilder().add_bytes(b"x", "../escape.bin")


def test_directory_artifacts_are_listed_file_by_file(tmp_path):
    package = tmp_path / "model.mlpackage"
    (package / "Data" / "weights").mkdir(parents=True)
    (package / "Manifest.json").write_text("{}")
    (package / "Data" / "weights" / "weight.bin").write_bytes(b"\0" * 64)
    builder = BundleBuilder()
    builder.add_tree(package, "model.mlpackage")
    manifest = _manifest()
    from dataclasses import replace

    written = builder.write(tmp_path / "coreml", replace(manifest, format="coreml", entrypoint="model.mlpackage"))
    paths = sorted(f.path for f in written.manifest.files)
    assert paths == ["model.mlpackage/Data/weights/weight.bin", "model.mlpackage/Manifest.json"]
    assert Bundle.open(written.root).model_path.name == "model.mlpackage"
