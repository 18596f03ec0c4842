"""``TextModel``: a language model on the device, with the exact signal a router needs.

Before any token is generated the prompt is tokenized and counted; a request that cannot fit
(``prompt + max_tokens > context``) raises ``ContextOverflowError`` carrying the numbers, so
the fallback router can send it to the cloud instead of letting llama.cpp truncate or fail.
Chat prompts are rendered from the chat template stored in the model file (sandboxed Jinja,
as transformers and llama.cpp do), so counting and generation see the very same tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgewise.bundle import Bundle
from edgewise.device_runtime._placed import PlacedModel
from edgewise.device_runtime._placement import Placement
from edgewise.errors import ContextOverflowError, InferenceError, InputError

Message = Mapping[str, str]


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn / stop string) or "length" (max_tokens reached)


class TextStream:
    """Iterator of text pieces; ``completion`` holds the totals once the stream is exhausted."""

    def __init__(self, pieces: Iterator[str], finish: dict[str, Any], prompt_tokens: int) -> None:
        self._pieces = pieces
        self._finish = finish
        self._prompt_tokens = prompt_tokens
        self._text: list[str] = []
        self.completion: Completion | None = None

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        try:
            piece = next(self._pieces)
        except StopIteration:
            self.completion = Completion("".join(self._text), self._prompt_tokens,
                                         int(self._finish.get("tokens", 0)), self._finish.get("reason") or "stop")
            raise
        self._text.append(piece)
        return piece

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()


class TextModel(PlacedModel):
    """A GGUF language model placed on this device (see ``device_runtime.load``)."""

    def __init__(self, session: Any, placement: Placement, path: Path, bundle: Bundle | None) -> None:
        self._session = session
        self._llm = session.llm
        self.placement = placement
        self.path = path
        self.bundle = bundle
        self.info = session.info
        self.offload = session.offload
        self.context_length: int = int(self._llm.n_ctx())
        self.chat_template: str | None = session.info.chat_template
        self._template = None

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids as llama.cpp sees them, BOS included when the model adds one."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=self.info.add_bos, special=special)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def render_chat(self, messages: Sequence[Message]) -> str:
        """The prompt text the model's own chat template makes of ``messages`` (generation prompt added)."""
        if not messages:
            raise InputError("chat() needs at least one message")
        for index, message in enumerate(messages):
            if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
                raise InputError(f"message {index} must be a mapping with 'role' and 'content'")
        template = self._compiled_template()
        llm = self._llm
        try:
            return template.render(messages=list(messages), add_generation_prompt=True,
                                   bos_token=_piece(llm, llm.token_bos()), eos_token=_piece(llm, llm.token_eos()))
        except Exception as exc:  # a template's raise_exception() or a template bug
            raise InputError(f"the model's chat template rejected these messages: {exc}") from exc

    def count_chat_tokens(self, messages: Sequence[Message]) -> int:
        return len(self._chat_tokens(messages))

    def generate(self, prompt: str, *, max_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                 stop: Sequence[str] | None = None, seed: int | None = None,
                 stream: bool = False) -> Completion | TextStream:
        """Continue ``prompt``. ``temperature=0`` is greedy (reproducible)."""
        return self._complete(self.tokenize(prompt), max_tokens, temperature, top_p, stop, seed, stream)

    def chat(self, messages: Sequence[Message], *, max_tokens: int = 128, temperature: float = 0.0,
             top_p: float = 1.0, stop: Sequence[str] | None = None, seed: int | None = None,
             stream: bool = False) -> Completion | TextStream:
        """Answer a conversation using the chat template stored in the model file."""
        return self._complete(self._chat_tokens(messages), max_tokens, temperature, top_p, stop, seed, stream)

    def __repr__(self) -> str:
        return f"TextModel({self.path.name}: {self.placement.describe()}, n_ctx={self.context_length})"

    # -- internals ---------------------------------------------------------------------------------

    def _complete(self, tokens: list[int], max_tokens: int, temperature: float, top_p: float,
                  stop: Sequence[str] | None, seed: int | None, stream: bool) -> Completion | TextStream:
        if max_tokens < 1:
            raise InputError(f"max_tokens must be at least 1, not {max_tokens}")
        if len(tokens) + max_tokens > self.context_length:
            raise ContextOverflowError(
                f"prompt of {len(tokens)} tokens + {max_tokens} requested tokens exceeds the on-device context "
                f"of {self.context_length} tokens",
                prompt_tokens=len(tokens), requested_tokens=max_tokens, context_size=self.context_length,
            )
        kwargs = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=0 if temperature else 1,
                      min_p=0.0, repeat_penalty=1.0, stop=list(stop or []), seed=seed)
        if stream:
            finish: dict[str, Any] = {}
            return TextStream(self._stream(tokens, kwargs, finish), finish, len(tokens))
        with self._session.lock:
            try:
                result = self._llm.create_completion(tokens, **kwargs)
            except Exception as exc:
                raise InferenceError(f"llama.cpp failed while generating: {exc}") from exc
        choice, usage = result["choices"][0], result["usage"]
        return Completion(choice["text"], usage["prompt_tokens"], usage["completion_tokens"],
                          choice.get("finish_reason") or "stop")

    def _stream(self, tokens: list[int], kwargs: dict[str, Any], finish: dict[str, Any]) -> Iterator[str]:
        with self._session.lock:
            try:
                for chunk in self._llm.create_completion(tokens, stream=True, **kwargs):
                    choice = chunk["choices"][0]
                    if choice.get("finish_reason"):
                        finish["reason"] = choice["finish_reason"]
                    finish["tokens"] = finish.get("tokens", 0) + (1 if choice["text"] else 0)
                    if choice["text"]:
                        yield choice["text"]
            except GeneratorExit:
                raise
            except Exception as exc:
                raise InferenceError(f"llama.cpp failed while streaming: {exc}") from exc

    def _chat_tokens(self, messages: Sequence[Message]) -> list[int]:
        text = self.render_chat(messages)
        # The template writes BOS itself where the model wants it; never add a second one.
        tokens = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        return tokens

    def _compiled_template(self):
        if self._template is None:
            if not self.chat_template:
                raise InputError(f"{self.path.name} has no chat template (tokenizer.chat_template)",
                                 hint="Use generate() with your own prompt format, or convert the model with "
                                      "its tokenizer_config.json chat template.")
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise TemplateError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template)
        return self._template


def _piece(llm: Any, token: int) -> str:
    if token < 0:
        return ""
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")
