"""A byte-level BPE ``tokenizer.json`` as llama.cpp's ``tokenizer.ggml.*`` metadata.

llama.cpp re-implements tokenization in C++, choosing its pre-tokenizer regex by the name in
``tokenizer.ggml.pre``. A wrong name silently splits text differently from the model's own
tokenizer (digits, contractions, newlines), so the name is derived from the structure of the
Hugging Face pre-tokenizer and an unknown structure is an error, not a guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgewise.converters._gguf._checkpoint import HfCheckpoint, read_json
from edgewise.errors import UnsupportedModelError

# llama.cpp token types (gguf.TokenType)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class GgufVocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    chat_template: str | None


def read_vocab(checkpoint: HfCheckpoint, *, pre_tokenizer: str | None = None) -> GgufVocab:
    data = read_json(checkpoint.tokenizer_json, required=True)
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not _is_byte_level(data):
        raise UnsupportedModelError(
            f"{checkpoint.path.name}: tokenizer.json is a {model.get('type', '?')} tokenizer without byte-level "
            "pre-tokenization; edgewise converts byte-level BPE vocabularies (GPT-2, Llama 3, SmolLM, Qwen2)",
            hint="SentencePiece vocabularies (Llama 2, Mistral v0.1) need llama.cpp's convert_hf_to_gguf.py.",
        )
    vocab: dict[str, int] = model["vocab"]
    added = {int(t["id"]): t for t in data.get("added_tokens", [])}
    size = max(int(checkpoint.config.get("vocab_size") or 0), len(vocab), max(added, default=-1) + 1)
    tokens: list[str | None] = [None] * size
    types = [NORMAL] * size
    for text, index in vocab.items():
        tokens[index] = text
    for index, token in added.items():
        tokens[index] = token["content"]
        types[index] = CONTROL if token.get("special") else USER_DEFINED
    for index, text in enumerate(tokens):
        if text is None:  # the embedding matrix is larger than the vocabulary (padding rows)
            tokens[index] = f"[PAD{index}]"
            types[index] = UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    bos = _special_id(checkpoint, "bos", vocab, added)
    return GgufVocab(
        tokens=[str(t) for t in tokens], token_types=types, merges=merges,
        pre=pre_tokenizer or detect_pre_tokenizer(data.get("pre_tokenizer"), checkpoint.path.name),
        bos_id=bos, eos_id=_special_id(checkpoint, "eos", vocab, added),
        unk_id=_special_id(checkpoint, "unk", vocab, added), pad_id=_special_id(checkpoint, "pad", vocab, added),
        add_bos=_adds_bos(checkpoint.tokenizer_json, bos), chat_template=_chat_template(checkpoint),
    )


def detect_pre_tokenizer(pre: Any, where: str) -> str:
    """llama.cpp's name for a Hugging Face byte-level pre-tokenizer configuration."""
    steps = pre.get("pretokenizers", []) if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") if isinstance(s, dict) else None for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if regex == _LLAMA3_REGEX:
            return "llama-bpe"
        if regex == _QWEN2_REGEX:
            return "qwen2"
    raise UnsupportedModelError(
        f"{where}: cannot tell which llama.cpp pre-tokenizer matches {json.dumps(pre)[:200]}",
        hint="Name it explicitly (recipe [gguf] pre_tokenizer = \"llama-bpe\" | \"qwen2\" | \"smollm\" | \"gpt-2\"), "
             "after checking llama.cpp's tokenization matches.",
    )


def _is_byte_level(data: dict[str, Any]) -> bool:
    return "ByteLevel" in json.dumps(data.get("pre_tokenizer")) or "ByteLevel" in json.dumps(data.get("decoder"))


def _special_id(checkpoint: HfCheckpoint, kind: str, vocab: dict[str, int], added: dict[int, Any]) -> int | None:
    """The model's own ids (config/generation_config) win over tokenizer_config's token strings."""
    for source in (checkpoint.generation_config, checkpoint.config):
        value = source.get(f"{kind}_token_id")
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int) and value >= 0:
            return value
    token = checkpoint.tokenizer_config.get(f"{kind}_token")
    if isinstance(token, dict):
        token = token.get("content")
    if isinstance(token, str):
        by_text = {t["content"]: i for i, t in added.items()}
        return by_text.get(token, vocab.get(token))
    return None


def _adds_bos(path: Path, bos: int | None) -> bool:
    """Whether the tokenizer itself prepends BOS: observed, not read from flags that often disagree."""
    if bos is None:
        return False
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(path)).encode("a").ids
    return bool(ids) and ids[0] == bos


def _chat_template(checkpoint: HfCheckpoint) -> str | None:
    template = checkpoint.tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: llama.cpp uses the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not template and (checkpoint.path / "chat_template.jinja").is_file():
        template = (checkpoint.path / "chat_template.jinja").read_text(encoding="utf-8")
    return template or None

