"""Tiny Llama-family checkpoints built in the tests (random weights, real formats), and SmolLM2 paths."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "On-device models run on phones, laptops and boards; the cloud serves what they cannot.",
    "In 1997, 42 people counted 1234 apples and 56 pears!",
    "Tokenizers split text into pieces: words, digits, punctuation and spaces.",
] * 20


def train_tokenizer(dest: Path, vocab_size: int = 320) -> Path:
    """A real byte-level BPE tokenizer.json (plain GPT-2 style pre-tokenization), trained here in ~0.1 s."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    }))
    return dest


def tiny_checkpoint(dest: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A 2-layer random Llama (GQA: 4 heads, 2 KV heads) or Qwen2 (q/k/v biases) saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    train_tokenizer(dest)
    vocab = json.loads((dest / "tokenizer.json").read_text())["model"]["vocab"]
    common = dict(vocab_size=len(vocab) + 3, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                  rope_theta=10000.0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**common)) if arch == "llama" else Qwen2ForCausalLM(Qwen2Config(**common))
    with torch.no_grad():  # larger weights than the init: distributions far from uniform, so errors show
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(8.0)
    model.save_pretrained(dest, safe_serialization=True)
    return dest
