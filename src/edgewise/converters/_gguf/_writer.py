"""Write a Hugging Face Llama-family checkpoint as a GGUF file (F32, F16 or BF16) with gguf-py.

What llama.cpp expects and the checkpoint does not say directly: its own tensor names (from
gguf-py's name map), q/k projection rows reordered for its rotary layout (Llama/Mistral),
1-D tensors (norms, biases) kept in F32, and the tokenizer as ``tokenizer.ggml.*`` metadata.
The file is written beside its destination and renamed into place, so a failed conversion
never leaves a half-written model where a runtime could pick it up.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgewise.converters._gguf._checkpoint import HfCheckpoint
from edgewise.converters._gguf._tokenizer import GgufVocab, read_vocab
from edgewise.errors import ConversionError, UnsupportedModelError

FLOAT_TYPES = ("f32", "f16", "bf16")
_SKIPPED = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class WrittenGguf:
    path: Path
    dtype: str
    tensors: int
    params: int
    architecture: str
    vocab: GgufVocab


def write_gguf(checkpoint: HfCheckpoint, dest: str | Path, *, dtype: str = "f16", pre_tokenizer: str | None = None,
               progress: Callable[[str], None] | None = None) -> WrittenGguf:
    import gguf

    if dtype not in FLOAT_TYPES:
        raise ConversionError(f"GGUF float type {dtype!r} is unknown; use one of {', '.join(FLOAT_TYPES)}",
                              hint="Quantized types (q8_0, q4_k_m, ...) are made from the F16/F32 file.")
    dest = Path(dest)
    vocab = read_vocab(checkpoint, pre_tokenizer=pre_tokenizer)
    arch = gguf.MODEL_ARCH.LLAMA if checkpoint.gguf_architecture == "llama" else gguf.MODEL_ARCH.QWEN2
    n_blocks = int(checkpoint.hparam("num_hidden_layers"))
    names = gguf.get_tensor_name_map(arch, n_blocks)
    partial = dest.with_name(dest.name + ".partial")
    writer = gguf.GGUFWriter(partial, checkpoint.gguf_architecture)
    try:
        _write_hparams(writer, checkpoint, dtype, vocab, gguf)
        count = params = 0
        tied = bool(checkpoint.config.get("tie_word_embeddings", False))
        for hf_name, data in _tensors(checkpoint):
            if hf_name.endswith(_SKIPPED) or (tied and hf_name == "lm_head.weight"):
                continue
            name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise UnsupportedModelError(
                    f"{checkpoint.path.name}: tensor {hf_name} has no llama.cpp counterpart "
                    f"for architecture {checkpoint.gguf_architecture}",
                )
            if checkpoint.permute_qk and name.endswith(("attn_q.weight", "attn_k.weight")):
                heads = checkpoint.n_heads if name.endswith("attn_q.weight") else checkpoint.n_kv_heads
                data = permute_rotary(data, heads)
            _add(writer, name, data, dtype, gguf)
            count += 1
            params += data.size
            if progress and count % 64 == 0:
                progress(f"{count} tensors")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, dest)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    return WrittenGguf(dest, dtype, count, params, checkpoint.gguf_architecture, vocab)


def permute_rotary(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """HF's rotate-half row order -> llama.cpp's interleaved pairs, per head (as convert_hf_to_gguf)."""
    return (weights.reshape(n_heads, 2, weights.shape[0] // n_heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _write_hparams(writer, ckpt: HfCheckpoint, dtype: str, vocab: GgufVocab, gguf) -> None:
    writer.add_name(ckpt.name)
    writer.add_context_length(int(ckpt.hparam("max_position_embeddings")))
    writer.add_embedding_length(int(ckpt.hparam("hidden_size")))
    writer.add_block_count(int(ckpt.hparam("num_hidden_layers")))
    writer.add_feed_forward_length(int(ckpt.hparam("intermediate_size")))
    writer.add_head_count(ckpt.n_heads)
    writer.add_head_count_kv(ckpt.n_kv_heads)
    writer.add_rope_dimension_count(ckpt.head_dim)
    if ckpt.head_dim * ckpt.n_heads != int(ckpt.hparam("hidden_size")):
        writer.add_key_length(ckpt.head_dim)
        writer.add_value_length(ckpt.head_dim)
    writer.add_rope_freq_base(float(ckpt.config.get("rope_theta") or 10000.0))
    writer.add_layer_norm_rms_eps(float(ckpt.config.get("rms_norm_eps") or 1e-6))
    scaling = ckpt.config.get("rope_scaling") or {}
    if (scaling.get("rope_type") or scaling.get("type")) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    writer.add_vocab_size(len(vocab.tokens))
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype]
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    for kind in ("bos", "eos", "unk", "pad"):
        value = getattr(vocab, f"{kind}_id")
        if value is not None:
            getattr(writer, f"add_{kind}_token_id")(value)
    writer.add_add_bos_token(vocab.add_bos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def _tensors(ckpt: HfCheckpoint) -> Iterator[tuple[str, np.ndarray]]:
    """Every tensor as float32 numpy (BF16 checkpoints included: numpy has no bfloat16)."""
    from safetensors import safe_open

    for path in ckpt.weight_files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                    yield key, handle.get_tensor(key).float().numpy()
        except (OSError, ValueError, RuntimeError) as exc:
            raise ConversionError(f"cannot read weights {path.name}: {exc}",
                                  hint="The safetensors file may be truncated; save the model again.") from exc


def _add(writer, name: str, data: np.ndarray, dtype: str, gguf) -> None:
    if data.ndim <= 1 or dtype == "f32":
        writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
    elif dtype == "f16":
        writer.add_tensor(name, data.astype(np.float16))
    else:
        kind = gguf.GGMLQuantizationType.BF16
        writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
