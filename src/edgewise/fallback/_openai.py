"""OpenAI-compatible text endpoints (vLLM, llama.cpp's server, TGI's Messages API, ...).

``/v1/chat/completions`` and ``/v1/completions``, whole or streamed as server-sent events
(``data: {json}`` lines ending with ``data: [DONE]``), with ``usage`` when the server reports it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx

from edgewise.errors import CloudResponseError
from edgewise.fallback import _loop
from edgewise.fallback._client import CloudCompletion, Messages
from edgewise.fallback._http import ResilientHTTP
from edgewise.fallback._resilience import Deadline
from edgewise.fallback.config import Endpoint


class OpenAIClient:
    protocol = "openai"

    def __init__(self, endpoint: Endpoint, *, transport: httpx.BaseTransport | None = None) -> None:
        self.endpoint = endpoint
        self.http = ResilientHTTP(endpoint, transport=transport)

    def ready(self, deadline: Deadline) -> bool:
        body = self.http.request("GET", "/v1/models", deadline=deadline)
        return isinstance(body, dict) and isinstance(body.get("data"), list)

    def _body(self, key: str, value: Any, max_tokens: int, temperature: float, stop: Sequence[str] | None,
              stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {key: value, "max_tokens": max_tokens, "temperature": temperature, "stream": stream}
        if self.endpoint.model:
            body["model"] = self.endpoint.model
        if stop:
            body["stop"] = list(stop)
        return body

    def chat(self, messages: Messages, *, max_tokens: int, temperature: float = 0.0,
                   stop: Sequence[str] | None = None, deadline: Deadline) -> CloudCompletion:
        body = self._body("messages", list(messages), max_tokens, temperature, stop, False)
        answer = self.http.request("POST", "/v1/chat/completions", deadline=deadline, json=body)
        return self._completion(answer, "/v1/chat/completions", lambda c: c["message"].get("content") or "")

    def complete(self, prompt: str, *, max_tokens: int, temperature: float = 0.0,
                       stop: Sequence[str] | None = None, deadline: Deadline) -> CloudCompletion:
        body = self._body("prompt", prompt, max_tokens, temperature, stop, False)
        answer = self.http.request("POST", "/v1/completions", deadline=deadline, json=body)
        return self._completion(answer, "/v1/completions", lambda c: c["text"])

    def chat_stream(self, messages: Messages, *, max_tokens: int, temperature: float = 0.0,
                    stop: Sequence[str] | None = None, deadline: Deadline) -> Iterator[str]:
        body = self._body("messages", list(messages), max_tokens, temperature, stop, True)
        return _loop.iterate(self._stream("/v1/chat/completions", body, deadline, _delta))

    def complete_stream(self, prompt: str, *, max_tokens: int, temperature: float = 0.0,
                        stop: Sequence[str] | None = None, deadline: Deadline) -> Iterator[str]:
        body = self._body("prompt", prompt, max_tokens, temperature, stop, True)
        return _loop.iterate(self._stream("/v1/completions", body, deadline, _text))

    async def _stream(self, path: str, body: dict[str, Any], deadline: Deadline, piece: Any) -> AsyncIterator[str]:
        done = False
        # aclosing: a caller that stops reading closes the HTTP stream now, not when it is collected
        async with contextlib.aclosing(self.http.stream_lines("POST", path, deadline=deadline, json=body,
                                                              last=_is_done)) as lines:
            async for line in lines:
                if _is_done(line):  # stream_lines gives it last, after judging the endpoint
                    done = True
                    break
                if not line.startswith("data:"):
                    continue  # blank separators, comments (": ping"), event names
                data = line[5:].strip()
                try:
                    event = json.loads(data)
                    choices = event.get("choices") or []
                    text = piece(choices[0]) if choices else None
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise CloudResponseError(f"{self.endpoint.name}{path}: unreadable stream event {data[:120]!r}",
                                             endpoint=self.endpoint.name) from exc
                if text:
                    yield text
        if not done:
            raise CloudResponseError(f"{self.endpoint.name}{path}: the stream ended without [DONE]",
                                     endpoint=self.endpoint.name,
                                     hint="The server closed the stream early; the answer is incomplete.")

    def _completion(self, answer: Any, path: str, text: Any) -> CloudCompletion:
        try:
            choice = answer["choices"][0]
            usage = answer.get("usage") or {}
            return CloudCompletion(text=text(choice), finish_reason=choice.get("finish_reason"),
                                   prompt_tokens=usage.get("prompt_tokens"),
                                   completion_tokens=usage.get("completion_tokens"), model=answer.get("model"))
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise CloudResponseError(f"{self.endpoint.name}{path}: not an OpenAI completion: {str(answer)[:200]}",
                                     endpoint=self.endpoint.name) from exc


def _is_done(line: str) -> bool:
    """OpenAI's end-of-stream event: the answer is complete."""
    return line.startswith("data:") and line[5:].strip() == "[DONE]"


def _delta(choice: dict[str, Any]) -> str | None:
    return (choice.get("delta") or {}).get("content")


def _text(choice: dict[str, Any]) -> str | None:
    return choice.get("text")
