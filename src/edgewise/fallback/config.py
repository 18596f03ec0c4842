"""Cloud endpoints and router settings: plain data, validated when built.

    endpoint = Endpoint(url="https://llm.example.com", protocol="openai", model="smollm2")
    config = RouterConfig(text=endpoint, mode="prefer_on_device", deadline_s=30)

or from TOML (``load_config``)::

    mode = "prefer_on_device"
    deadline_s = 30
    [text]                       # language models: an OpenAI-compatible server (vLLM, llama.cpp, ...)
    url = "https://llm.example.com"
    protocol = "openai"
    model = "smollm2"
    token_env = "EDGEWISE_CLOUD_TOKEN"   # bearer token from this environment variable (or token = "...")
    [tensor]                     # tensor models: KServe v2 / Open Inference Protocol (Triton, MLServer)
    url = "https://kserve.example.com"
    protocol = "kserve"
    model = "digits"

TLS certificates are verified unless ``verify = false`` (or a CA bundle path) says otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import tomllib

from edgewise.errors import FallbackConfigError
from edgewise.fallback._decision import HostPolicy, Mode
from edgewise.fallback._resilience import BreakerPolicy, RetryPolicy

PROTOCOLS = ("openai", "kserve")
DEFAULT_TOKEN_ENV = "EDGEWISE_CLOUD_TOKEN"


@dataclass(frozen=True)
class Endpoint:
    """One cloud endpoint and how to talk to it."""

    url: str
    protocol: str = "openai"
    model: str = ""
    model_version: str | None = None  # KServe: /v2/models/{model}/versions/{v}
    token: str | None = None
    token_env: str | None = DEFAULT_TOKEN_ENV
    verify: bool | str = True  # False, or a CA bundle path; never silently off
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 60.0
    max_concurrency: int = 16
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)

    def __post_init__(self) -> None:
        parsed = urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise FallbackConfigError(f"endpoint url {self.url!r} is not an http(s) URL")
        if self.protocol not in PROTOCOLS:
            raise FallbackConfigError(f"unknown endpoint protocol {self.protocol!r}; expected one of {PROTOCOLS}")
        if self.max_concurrency < 1:
            raise FallbackConfigError(f"max_concurrency must be >= 1, not {self.max_concurrency}")
        if self.retry.attempts < 1:
            raise FallbackConfigError(f"retry attempts must be >= 1, not {self.retry.attempts}")

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    @property
    def name(self) -> str:
        return f"{self.protocol}:{self.base_url}"

    def bearer_token(self) -> str | None:
        """The token from the config, else from ``token_env`` in the environment, else None."""
        if self.token:
            return self.token
        if self.token_env:
            return os.environ.get(self.token_env) or None
        return None

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "endpoint") -> Endpoint:
        if not isinstance(data, dict):
            raise FallbackConfigError(f"{where} must be a table, not {type(data).__name__}")
        known = {f.name for f in fields(cls)} - {"retry", "breaker"}
        unknown = set(data) - known - {"retry", "breaker"}
        if unknown:
            raise FallbackConfigError(f"{where}: unknown keys {sorted(unknown)}")
        if "url" not in data:
            raise FallbackConfigError(f"{where}: missing url")
        try:
            retry = replace(RetryPolicy(), **data.get("retry", {}))
            breaker = replace(BreakerPolicy(), **data.get("breaker", {}))
        except TypeError as exc:
            raise FallbackConfigError(f"{where}: {exc}") from exc
        return cls(**{k: v for k, v in data.items() if k in known}, retry=retry, breaker=breaker)


@dataclass(frozen=True)
class RouterConfig:
    """How the router decides. ``text`` / ``tensor`` are the cloud endpoints for each kind of model."""

    text: Endpoint | None = None
    tensor: Endpoint | None = None
    mode: Mode = Mode.PREFER_ON_DEVICE
    deadline_s: float = 60.0  # whole request, device and cloud together
    device_deadline_s: float | None = None  # give up on the device after this and try the cloud
    host_policy: HostPolicy = field(default_factory=HostPolicy)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", Mode(self.mode))
        except ValueError as exc:
            raise FallbackConfigError(
                f"unknown mode {self.mode!r}; expected one of {[m.value for m in Mode]}") from exc
        if self.deadline_s <= 0:
            raise FallbackConfigError(f"deadline_s must be > 0, not {self.deadline_s}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RouterConfig:
        data = dict(data)
        text = data.pop("text", None)
        tensor = data.pop("tensor", None)
        host = data.pop("host_policy", None)
        allowed = {"mode", "deadline_s", "device_deadline_s"}
        if set(data) - allowed:
            raise FallbackConfigError(f"unknown router keys {sorted(set(data) - allowed)}")
        return cls(
            text=Endpoint.from_dict(text, "text") if text is not None else None,
            tensor=Endpoint.from_dict(tensor, "tensor") if tensor is not None else None,
            host_policy=HostPolicy(**host) if host else HostPolicy(),
            **data,
        )


def load_config(path: str | os.PathLike[str]) -> RouterConfig:
    """A ``RouterConfig`` from a TOML file (see the module docstring)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FallbackConfigError(f"fallback config {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise FallbackConfigError(f"{path}: invalid TOML: {exc}") from exc
    return RouterConfig.from_dict(data)
