"""A damaged GGUF is refused by our header check, before llama.cpp maps it."""

from __future__ import annotations

import struct

import pytest

pytest.importorskip("gguf")

from edgewise import device_runtime
from edgewise.device_runtime import read_gguf_info
from edgewise.errors import ArtifactError


@pytest.fixture(scope="module")
def good_gguf(tmp_path_factory):
    pytest.importorskip("transformers")
    from edgewise.converters.gguf import hf_to_gguf
    from tests.gguf_models import tiny_checkpoint

    tmp = tmp_path_factory.mktemp("gguf")
    hf_to_gguf(tiny_checkpoint(tmp / "hf"), tmp / "tiny.gguf", dtype="f16")
    return tmp / "tiny.gguf"


def test_good_file_is_described(good_gguf):
    info = read_gguf_info(good_gguf)
    assert info.architecture == "llama" and info.block_count == 2 and info.context_length == 256
    layers, other = info.layer_bytes()
    assert len(layers) == 2 and all(n > 0 for n in layers) and other > 0
    assert info.data_offset + sum(t.nbytes for t in info.tensors) <= info.file_size
    assert info.chat_template and "im_start" in info.chat_template


@pytest.mark.parametrize("keep", [0.999, 0.75, 0.5, 0.1, 0.01])
def test_truncated_file_is_refused_by_us_and_by_load(good_gguf, tmp_path, keep):
    data = good_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ArtifactError, match="truncated|corrupt"):
        read_gguf_info(cut)
    with pytest.raises(ArtifactError):
        device_runtime.load(cut)


def test_not_gguf_and_wrong_version(good_gguf, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\x00" * 4096)
    with pytest.raises(ArtifactError, match="not a GGUF file"):
        read_gguf_info(junk)
    data = bytearray(good_gguf.read_bytes())
    data[4:8] = struct.pack("<I", 99)
    future = tmp_path / "future.gguf"
    future.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="version 99"):
        device_runtime.load(future)


def test_lying_counts_are_refused(good_gguf, tmp_path):
    data = bytearray(good_gguf.read_bytes())
    data[8:16] = struct.pack("<Q", 1 << 40)  # tensor count
    liar = tmp_path / "liar.gguf"
    liar.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="claims"):
        read_gguf_info(liar)


def test_tensor_extent_past_the_end_is_refused(good_gguf, tmp_path):
    """Same size file, but the last tensor's offset points past the data: caught by the extent check."""
    info = read_gguf_info(good_gguf)
    last = max(info.tensors, key=lambda t: t.offset)
    data = bytearray(good_gguf.read_bytes())
    needle = last.name.encode() + struct.pack("<I", len(last.shape))
    at = data.index(needle) + len(needle) + 8 * len(last.shape) + 4
    assert struct.unpack("<Q", data[at:at + 8])[0] == last.offset
    data[at:at + 8] = struct.pack("<Q", last.offset + (1 << 20))
    bad = tmp_path / "bad-offset.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="outside the file"):
        device_runtime.load(bad)
