"""GGUF for language models: Hugging Face Llama-family checkpoint -> GGUF, quantize, measure.

    from edgewise.converters.gguf import hf_to_gguf, quantize_gguf
    hf_to_gguf("my-finetune/", "model-f16.gguf", dtype="f16")
    q = quantize_gguf("model-f16.gguf", "model-q4_k_m.gguf", "q4_k_m")
    print(q.bits_per_weight, q.describe_fallbacks())

Recipes (``task = "text-generation"``, ``format = "gguf"``) run all of it with the quality gate.
"""

from __future__ import annotations

from pathlib import Path

from edgewise.converters._gguf._checkpoint import ARCHITECTURES, HfCheckpoint, read_checkpoint
from edgewise.converters._gguf._quality import Quality
from edgewise.converters._gguf._quantize import QUANT_TYPES, QuantizedGguf, quantize_gguf
from edgewise.converters._gguf._writer import FLOAT_TYPES, WrittenGguf, write_gguf


def hf_to_gguf(checkpoint: str | Path, dest: str | Path, *, dtype: str = "f16",
               pre_tokenizer: str | None = None) -> WrittenGguf:
    """Convert a Hugging Face checkpoint folder to one GGUF file (``dtype``: f32, f16 or bf16)."""
    return write_gguf(read_checkpoint(checkpoint), dest, dtype=dtype, pre_tokenizer=pre_tokenizer)


__all__ = [
    "ARCHITECTURES",
    "FLOAT_TYPES",
    "QUANT_TYPES",
    "HfCheckpoint",
    "Quality",
    "QuantizedGguf",
    "WrittenGguf",
    "hf_to_gguf",
    "quantize_gguf",
    "read_checkpoint",
]
