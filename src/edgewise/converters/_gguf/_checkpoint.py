"""A Hugging Face causal-LM checkpoint folder, checked before any tensor is read.

Every problem a user can fix (an architecture llama.cpp's llama/qwen2 graphs cannot run, a
missing tokenizer, no weights) is raised here as a ``ConversionError`` naming the file, so a
conversion never fails half-way through writing a multi-GB file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgewise.errors import ConversionError, UnsupportedModelError

# HF architecture -> (GGUF architecture, whether q/k weights need llama.cpp's rotary permutation).
# Llama and Mistral store rotary halves interleaved the HF way and are permuted to llama.cpp's
# layout; Qwen2 uses the NEOX rotary layout in llama.cpp and is written as is (plus q/k/v bias).
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
}


@dataclass(frozen=True)
class HfCheckpoint:
    path: Path
    config: dict[str, Any]
    hf_architecture: str
    gguf_architecture: str
    permute_qk: bool
    weight_files: tuple[Path, ...]
    tokenizer_json: Path
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    generation_config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.config.get("_name_or_path") or self.path.name)

    def hparam(self, key: str, default: Any = None) -> Any:
        value = self.config.get(key, default)
        if value is None and default is None:
            raise ConversionError(f"{self.path / 'config.json'} has no {key!r}",
                                  hint="A Llama-family config.json lists hidden_size, num_hidden_layers, ...")
        return value

    @property
    def n_heads(self) -> int:
        return int(self.hparam("num_attention_heads"))

    @property
    def n_kv_heads(self) -> int:
        return int(self.config.get("num_key_value_heads") or self.n_heads)

    @property
    def head_dim(self) -> int:
        return int(self.config.get("head_dim") or int(self.hparam("hidden_size")) // self.n_heads)


def read_checkpoint(path: str | Path) -> HfCheckpoint:
    root = Path(path)
    if not root.is_dir():
        raise ConversionError(f"{root} is not a folder", hint="Pass a Hugging Face checkpoint folder "
                              "(config.json, *.safetensors, tokenizer.json).")
    config = read_json(root / "config.json", required=True)
    archs = config.get("architectures") or []
    arch = next((a for a in archs if a in ARCHITECTURES), None)
    if arch is None:
        raise UnsupportedModelError(
            f"{root.name}: architecture {', '.join(archs) or config.get('model_type', '?')} "
            "cannot be converted to GGUF by edgewise",
            hint=f"Supported: {', '.join(ARCHITECTURES)}. Other models: llama.cpp's convert_hf_to_gguf.py.",
        )
    scaling = config.get("rope_scaling")
    if scaling and (scaling.get("rope_type") or scaling.get("type")) not in (None, "default", "linear", "llama3"):
        raise UnsupportedModelError(f"{root.name}: rope_scaling {scaling} is not supported by this converter")
    weights = tuple(sorted(root.glob("*.safetensors")))
    if not weights:
        bins = sorted(root.glob("pytorch_model*.bin"))
        raise ConversionError(
            f"{root.name} has no *.safetensors weights" + (" (only pickled pytorch_model.bin)" if bins else ""),
            hint="Save the model with model.save_pretrained(dir, safe_serialization=True).",
        )
    tokenizer = root / "tokenizer.json"
    if not tokenizer.is_file():
        extra = " (tokenizer.model found: SentencePiece vocabularies are not supported yet)" \
            if (root / "tokenizer.model").exists() else ""
        raise ConversionError(
            f"{root.name} has no tokenizer.json{extra}",
            hint="Save the tokenizer next to the weights: AutoTokenizer.from_pretrained(...).save_pretrained(dir).",
        )
    gguf_arch, permute = ARCHITECTURES[arch]
    return HfCheckpoint(
        path=root, config=config, hf_architecture=arch, gguf_architecture=gguf_arch, permute_qk=permute,
        weight_files=weights, tokenizer_json=tokenizer,
        tokenizer_config=read_json(root / "tokenizer_config.json"),
        generation_config=read_json(root / "generation_config.json"),
    )


def read_json(path: Path, *, required: bool = False) -> dict[str, Any]:
    """A JSON object from the checkpoint folder; ``{}`` for an optional file that is absent."""
    if not path.is_file():
        if required:
            raise ConversionError(f"{path.parent.name} has no {path.name}",
                                  hint="A Hugging Face checkpoint folder needs config.json next to its weights.")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConversionError(f"{path} must hold a JSON object")
    return data
