"""Endpoint and router configuration: TOML, validation, token sources, TLS default."""

from __future__ import annotations

import pytest

from edgewise.errors import FallbackConfigError
from edgewise.fallback import Endpoint, Mode, RouterConfig, load_config


def test_toml_config_round_trip(tmp_path):
    path = tmp_path / "fallback.toml"
    path.write_text('''
mode = "prefer_cloud"
deadline_s = 12.5
device_deadline_s = 3
[text]
url = "https://llm.example.com/"
model = "smollm2"
token_env = "MY_TOKEN"
max_concurrency = 4
[text.retry]
attempts = 5
[text.breaker]
open_s = 9
[tensor]
url = "http://127.0.0.1:8080"
protocol = "kserve"
model = "digits"
model_version = "2"
verify = "/etc/ssl/ca.pem"
''')
    config = load_config(path)
    assert config.mode is Mode.PREFER_CLOUD and config.deadline_s == 12.5 and config.device_deadline_s == 3
    assert config.text.base_url == "https://llm.example.com" and config.text.name == "openai:https://llm.example.com"
    assert config.text.retry.attempts == 5 and config.text.breaker.open_s == 9 and config.text.max_concurrency == 4
    assert config.text.verify is True
    assert config.tensor.protocol == "kserve" and config.tensor.verify == "/etc/ssl/ca.pem"


@pytest.mark.parametrize("text, match", [
    ('[text]\nurl = "ftp://x"', "not an http"),
    ('[text]\nurl = "http://x"\nprotocol = "grpc"', "unknown endpoint protocol"),
    ('[text]\nmodel = "m"', "missing url"),
    ('[text]\nurl = "http://x"\ncolour = "red"', "unknown keys"),
    ('[text]\nurl = "http://x"\n[text.retry]\ntries = 2', "tries"),
    ('mode = "sometimes"', "unknown mode"),
    ('deadline_s = 0', "deadline_s must be > 0"),
    ("mode = ", "invalid TOML"),
])
def test_bad_config_names_the_problem(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(FallbackConfigError, match=match):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(FallbackConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_token_from_config_wins_over_environment(monkeypatch):
    monkeypatch.setenv("EDGEWISE_CLOUD_TOKEN", "env")
    assert Endpoint("http://x").bearer_token() == "env"
    assert Endpoint("http://x", token="cfg").bearer_token() == "cfg"
    assert Endpoint("http://x", token_env=None).bearer_token() is None
    monkeypatch.delenv("EDGEWISE_CLOUD_TOKEN")
    assert Endpoint("http://x").bearer_token() is None


def test_router_config_defaults():
    config = RouterConfig()
    assert config.mode is Mode.PREFER_ON_DEVICE and config.text is None and config.tensor is None
    assert RouterConfig(mode="only_cloud").mode is Mode.ONLY_CLOUD
