"""Tests only: the on-device ``TextModel`` contract over ``llama_cpp.Llama`` on the real SmolLM2 GGUF.

Stands in for ``device_runtime.load("m.gguf")`` (the GGUF backend) until that lands on this branch;
it is the real engine and the real model, only the adapter is ours.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgewise.errors import ContextOverflowError


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class LlamaTextModel:
    def __init__(self, path: Path, n_ctx: int) -> None:
        from llama_cpp import Llama

        self._llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=2, verbose=False)
        self._lock = threading.Lock()
        self.context_length = n_ctx

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def count_chat_tokens(self, messages: Sequence[dict]) -> int:
        return self.count_tokens(_chatml(messages))

    def chat(self, messages, *, max_tokens=128, temperature=0.0, stop=None, stream=False):
        return self.generate(_chatml(messages), max_tokens=max_tokens, temperature=temperature,
                             stop=[*(stop or []), "<|im_end|>"], stream=stream)

    def generate(self, prompt, *, max_tokens=128, temperature=0.0, stop=None, stream=False):
        prompt_tokens = self.count_tokens(prompt)
        if prompt_tokens + max_tokens > self.context_length:
            raise ContextOverflowError(
                f"{prompt_tokens} prompt + {max_tokens} tokens > context {self.context_length}",
                prompt_tokens=prompt_tokens, requested_tokens=max_tokens, context_size=self.context_length)
        kwargs = {"max_tokens": max_tokens, "temperature": temperature, "stop": stop or None}
        if stream:
            return self._stream(prompt, kwargs)
        with self._lock:
            out = self._llm.create_completion(prompt, **kwargs)
        usage = out["usage"]
        return Completion(out["choices"][0]["text"], usage["prompt_tokens"], usage["completion_tokens"],
                          out["choices"][0]["finish_reason"])

    def _stream(self, prompt: str, kwargs: dict) -> Iterator[str]:
        with self._lock:
            for chunk in self._llm.create_completion(prompt, stream=True, **kwargs):
                text = chunk["choices"][0]["text"]
                if text:
                    yield text


def _chatml(messages: Sequence[dict]) -> str:
    """SmolLM2's chat template (from its GGUF): ChatML with a default system turn when none is given."""
    if not messages or messages[0]["role"] != "system":
        default = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
        messages = [{"role": "system", "content": default}, *messages]
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def load_text_model(path: Path, n_ctx: int):
    """The real GGUF backend when this branch has it, else the adapter above."""
    try:
        from edgewise.device_runtime import TextModel  # noqa: F401
    except ImportError:
        return LlamaTextModel(path, n_ctx)
    from edgewise import device_runtime

    return device_runtime.load(path, engine_options={"n_ctx": n_ctx})
