"""The router on real language models: SmolLM2 on the device (n_ctx 512), llama.cpp's server as the cloud."""

from __future__ import annotations

import pytest

from edgewise.demo.fallback import long_messages, short_messages
from edgewise.errors import CloudUnavailableError, FallbackConfigError, OnDeviceRefusedError
from edgewise.fallback import Endpoint, HostState, Router, RouterConfig
from tests.fallback import _servers

pytestmark = pytest.mark.slow


def _long_messages():
    return long_messages()


def _short_messages():
    return short_messages()


@pytest.fixture
def router(llama_server, device_llm):
    with Router(RouterConfig(text=Endpoint(llama_server), deadline_s=120), text_model=device_llm) as r:
        yield r


def test_short_prompt_stays_on_device(router):
    answer = router.chat(_short_messages(), max_tokens=24)
    assert answer.served_by == "device" and answer.reason == "fits_device"
    assert "Paris" in answer.text
    assert answer.latency_ms > 0 and answer.served.tried == ()


def test_long_prompt_goes_to_the_cloud_and_comes_back_correct(router, device_llm):
    messages = _long_messages()
    assert device_llm.count_chat_tokens(messages) > 512  # really over the on-device context
    answer = router.chat(messages, max_tokens=24)
    assert answer.served_by == "cloud" and answer.reason == "context_overflow"
    assert "Paris" in answer.text
    assert answer.prompt_tokens > 512  # the server's own count agrees it was long
    assert "> 512 on-device context" in answer.served.detail
    assert answer.served.describe().startswith("served by cloud (openai:http://127.0.0.1:")


def test_only_on_device_refuses_the_long_prompt_clearly(router):
    with pytest.raises(OnDeviceRefusedError) as info:
        router.chat(_long_messages(), max_tokens=24, mode="only_on_device")
    assert info.value.reason == "context_overflow"
    assert "on-device context" in str(info.value) and "hint:" in str(info.value)
    assert router.chat(_short_messages(), max_tokens=8, mode="only_on_device").served_by == "device"


def test_prefer_cloud_answers_on_device_when_the_cloud_is_unreachable(device_llm):
    dead = f"http://127.0.0.1:{_servers.free_port()}"  # nothing listens there
    with Router(RouterConfig(text=Endpoint(dead), mode="prefer_cloud", deadline_s=30), text_model=device_llm) as r:
        answer = r.chat(_short_messages(), max_tokens=24)
        assert answer.served_by == "device" and answer.reason == "cloud_unavailable"
        assert "Paris" in answer.text
        assert answer.served.tried[0].startswith("cloud: CloudUnavailableError: ")
        with pytest.raises(CloudUnavailableError):  # the long one has nowhere to go
            r.chat(_long_messages(), max_tokens=24)


def test_prefer_cloud_and_only_cloud_use_the_cloud(router):
    assert router.chat(_short_messages(), max_tokens=8, mode="prefer_cloud").served_by == "cloud"
    answer = router.complete("The capital of France is", max_tokens=8, mode="only_cloud")
    assert (answer.served_by, answer.reason) == ("cloud", "only_cloud") and "Paris" in answer.text


def test_streams_report_where_before_the_first_piece(router):
    short = router.chat_stream(_short_messages(), max_tokens=24)
    assert short.served_by == "device"
    assert "Paris" in "".join(short)
    long = router.chat_stream(_long_messages(), max_tokens=24)
    assert (long.served_by, long.reason) == ("cloud", "context_overflow")
    assert "Paris" in "".join(long)


def test_host_hook_low_battery_sends_work_to_the_cloud(llama_server, device_llm):
    state = {"host": HostState(battery_pct=8, charging=False)}
    with Router(RouterConfig(text=Endpoint(llama_server)), text_model=device_llm,
                host_state=lambda: state["host"]) as r:
        answer = r.chat(_short_messages(), max_tokens=8)
        assert (answer.served_by, answer.reason) == ("cloud", "host_state")
        assert "battery 8 %" in answer.served.detail
        state["host"] = HostState(battery_pct=8, charging=True)
        assert r.chat(_short_messages(), max_tokens=8).served_by == "device"


def test_model_not_installed_goes_to_the_cloud(llama_server, tmp_path):
    with Router(RouterConfig(text=Endpoint(llama_server)), text_model=tmp_path / "missing.gguf") as r:
        answer = r.chat(_short_messages(), max_tokens=8)
        assert (answer.served_by, answer.reason) == ("cloud", "model_not_installed")
    with Router(RouterConfig(), text_model=None) as r, pytest.raises(FallbackConfigError, match="no cloud endpoint"):
        r.chat(_short_messages(), max_tokens=8)


def test_device_deadline_moves_the_request_to_the_cloud(llama_server, device_llm):
    config = RouterConfig(text=Endpoint(llama_server), device_deadline_s=0.05, deadline_s=60)
    with Router(config, text_model=device_llm) as r:
        answer = r.chat([{"role": "user", "content": "Write a long story about a dragon."}], max_tokens=64)
    assert (answer.served_by, answer.reason) == ("cloud", "device_deadline")
    assert answer.served.tried[0].startswith("device: DeadlineExceededError")
