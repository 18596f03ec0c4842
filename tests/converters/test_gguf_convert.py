"""HF Llama-family -> GGUF: parity with transformers, llama.cpp quantization, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from edgewise.converters.gguf import hf_to_gguf, quantize_gguf
from edgewise.errors import ArtifactError, ConversionError, UnsupportedModelError
from tests.gguf_models import tiny_checkpoint

TEXT = "The quick brown fox jumps over the lazy dog. In 1997, 42 people"


def _hf_logits(path, text):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(path)(text)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return ids, model(torch.tensor([ids])).logits[0].numpy()


def _gguf_logits(path, ids):
    import llama_cpp

    # F32 KV cache: the default F16 cache alone moves logits by ~5e-3
    llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2, type_k=0, type_v=0)
    try:
        tokens = llm.tokenize(TEXT.encode(), add_bos=False, special=False)
        llm.eval(ids)
        return tokens, np.asarray(llm.scores[:len(ids)])
    finally:
        llm.close()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_f32_gguf_matches_transformers(tmp_path, arch):
    ckpt = tiny_checkpoint(tmp_path / "hf", arch)
    written = hf_to_gguf(ckpt, tmp_path / "m.gguf", dtype="f32")
    assert written.architecture == arch and written.vocab.pre == "gpt-2"
    ids, hf = _hf_logits(ckpt, TEXT)
    tokens, ours = _gguf_logits(tmp_path / "m.gguf", ids)
    assert tokens == ids  # llama.cpp's tokenizer splits like the Hugging Face one
    assert np.abs(ours - hf).max() < 1e-3, np.abs(ours - hf).max()
    assert (ours.argmax(-1) == hf.argmax(-1)).all()


def test_wrong_rotary_layout_would_be_caught(tmp_path):
    """The parity check is sharp: writing Llama q/k without llama.cpp's permutation changes the logits."""
    from edgewise.converters._gguf import _checkpoint, _writer

    ckpt = _checkpoint.read_checkpoint(tiny_checkpoint(tmp_path / "hf", "llama"))
    unpermuted = type(ckpt)(**{**ckpt.__dict__, "permute_qk": False})
    _writer.write_gguf(unpermuted, tmp_path / "bad.gguf", dtype="f32")
    ids, hf = _hf_logits(ckpt.path, TEXT)
    _, ours = _gguf_logits(tmp_path / "bad.gguf", ids)
    assert np.abs(ours - hf).max() > 1e-2


def test_quantize_reports_types_and_bits(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "hf")
    hf_to_gguf(ckpt, tmp_path / "m.gguf", dtype="f16")
    q8 = quantize_gguf(tmp_path / "m.gguf", tmp_path / "q8.gguf", "q8_0")
    assert set(q8.tensor_types) == {"Q8_0"} and q8.fallback_tensors == 0
    assert 8.0 < q8.bits_per_weight < 16.0
    # 64-wide rows cannot take K-quants (blocks of 256): llama.cpp falls back, and we say so.
    q4 = quantize_gguf(tmp_path / "m.gguf", tmp_path / "q4km.gguf", "q4_k_m")
    assert q4.fallback_tensors == q4.weight_tensors > 0
    assert "fell back" in q4.describe_fallbacks()


def test_unknown_quant_type_and_bad_source(tmp_path):
    with pytest.raises(ConversionError, match="unknown GGUF quantization"):
        quantize_gguf(tmp_path / "x.gguf", tmp_path / "y.gguf", "q3_weird")
    (tmp_path / "x.gguf").write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(ArtifactError, match="not a GGUF file"):
        quantize_gguf(tmp_path / "x.gguf", tmp_path / "y.gguf", "q8_0")
    assert not (tmp_path / "y.gguf").exists()


def test_unsupported_architecture_is_named(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "hf")
    config = json.loads((ckpt / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        hf_to_gguf(ckpt, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_missing_tokenizer_is_named(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "hf")
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(ConversionError, match="no tokenizer.json"):
        hf_to_gguf(ckpt, tmp_path / "m.gguf")


def test_unknown_pre_tokenizer_is_refused(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "hf")
    data = json.loads((ckpt / "tokenizer.json").read_text())
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (ckpt / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(UnsupportedModelError, match="pre-tokenizer"):
        hf_to_gguf(ckpt, tmp_path / "m.gguf")
    hf_to_gguf(ckpt, tmp_path / "m.gguf", pre_tokenizer="gpt-2")  # an explicit name is the way out


@pytest.mark.parametrize("qtype", ["q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"])
def test_every_listed_quantization_loads_and_generates(tmp_path, qtype):
    """Each type the issue names goes through llama.cpp's quantizer and the file runs on the device."""
    from edgewise import device_runtime

    ckpt = tiny_checkpoint(tmp_path / "hf")
    hf_to_gguf(ckpt, tmp_path / "m.gguf", dtype="f16")
    result = quantize_gguf(tmp_path / "m.gguf", tmp_path / f"{qtype}.gguf", qtype)
    assert result.size_bytes < (tmp_path / "m.gguf").stat().st_size
    with device_runtime.load(tmp_path / f"{qtype}.gguf", threads=2) as model:
        assert model.generate("The quick", max_tokens=4).completion_tokens == 4
