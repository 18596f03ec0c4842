"""The cloud clients against real servers: llama.cpp's OpenAI-compatible server and MLServer (KServe v2)."""

from __future__ import annotations

import numpy as np
import pytest

from edgewise.errors import CloudResponseError, CloudUnavailableError, FallbackConfigError
from edgewise.fallback import Deadline, Endpoint
from edgewise.fallback._kserve import KServeClient, decode, encode
from edgewise.fallback._openai import OpenAIClient
from edgewise.fallback._resilience import BreakerPolicy, BreakerState
from tests.fallback import _servers

QUESTION = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]
pytestmark = pytest.mark.slow


def test_openai_chat_and_usage(llama_server):
    client = OpenAIClient(Endpoint(llama_server, model="smollm2"))
    done = client.chat(QUESTION, max_tokens=24, deadline=Deadline(60))
    assert "Paris" in done.text
    assert done.prompt_tokens > 5 and 0 < done.completion_tokens <= 24
    assert done.finish_reason in ("stop", "length")
    assert client.ready(Deadline(10))


def test_openai_stream_matches_whole_answer(llama_server):
    client = OpenAIClient(Endpoint(llama_server))
    whole = client.chat(QUESTION, max_tokens=16, deadline=Deadline(60))
    pieces = list(client.chat_stream(QUESTION, max_tokens=16, deadline=Deadline(60)))
    assert len(pieces) > 3
    assert "".join(pieces) == whole.text


def test_openai_plain_completion_whole_and_streamed(llama_server):
    client = OpenAIClient(Endpoint(llama_server))
    prompt = "The capital of France is"
    whole = client.complete(prompt, max_tokens=8, deadline=Deadline(60))
    streamed = "".join(client.complete_stream(prompt, max_tokens=8, deadline=Deadline(60)))
    assert "Paris" in whole.text and streamed == whole.text
    assert whole.completion_tokens == 8 or whole.finish_reason == "stop"


def test_streams_give_the_breaker_a_verdict_and_their_slot_back(llama_server):
    """A half-open breaker lets one probe out. A caller that stops reading a stream leaves no verdict on
    the endpoint, and the probe and the connection slot are free again when its iterator closes; a
    stream read to its ``[DONE]`` is a success that closes the breaker."""
    client = OpenAIClient(Endpoint(llama_server, max_concurrency=1, breaker=BreakerPolicy(min_calls=1, open_s=0.0)))
    breaker = client.http.breaker
    breaker.acquire()
    breaker.record(False)  # opens; open_s=0: the next acquire finds it half-open
    stream = client.chat_stream(QUESTION, max_tokens=64, deadline=Deadline(60))
    assert next(stream)
    assert not breaker.acquire()  # the stream holds the only probe
    stream.close()
    assert breaker.state is BreakerState.HALF_OPEN  # abandoned: neither a success nor a failure
    assert breaker.acquire()  # the probe is back
    breaker.release()
    # The one slot is back too (else this would queue until its deadline), and completing closes the breaker.
    assert "Paris" in "".join(client.chat_stream(QUESTION, max_tokens=16, deadline=Deadline(20)))
    assert breaker.state is BreakerState.CLOSED


def test_bearer_token_from_config_and_environment(llama_server, monkeypatch):
    """Tokens go out as ``Authorization: Bearer``: seen by a proxy in front of the server."""
    seen = []
    with _servers.proxy(llama_server) as fp:
        original = fp._answer

        def spy(conn, fault, head, body):
            seen.append(head)
            original(conn, fault, head, body)

        fp._answer = spy
        monkeypatch.setenv("MY_TOKEN", "from-env")
        for endpoint, expected in ((Endpoint(fp.url, token="from-config"), b"Bearer from-config"),
                                   (Endpoint(fp.url, token_env="MY_TOKEN"), b"Bearer from-env")):
            OpenAIClient(endpoint).ready(Deadline(10))
            assert b"authorization: " + expected.lower() in seen[-1].lower()
        monkeypatch.delenv("EDGEWISE_CLOUD_TOKEN", raising=False)
        OpenAIClient(Endpoint(fp.url)).ready(Deadline(10))
        assert b"authorization" not in seen[-1].lower()


def test_tls_verification_is_on_by_default_and_refuses_a_plain_server(llama_server):
    endpoint = Endpoint(llama_server.replace("http://", "https://"))
    assert endpoint.verify is True
    with pytest.raises(CloudUnavailableError):
        OpenAIClient(endpoint).ready(Deadline(5))


def test_kserve_ready_metadata_and_infer(mlserver, digits_weights):
    client = KServeClient(Endpoint(mlserver, protocol="kserve", model="digits", model_version="1"))
    assert client.ready(Deadline(10))
    meta = client.metadata(Deadline(10))
    assert meta["name"] == "digits"
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    x = digits_weights["x"][:50]
    out = client.infer({"pixels": x}, deadline=Deadline(10))
    w = np.load(digits_weights["npz"])
    expected = np.maximum(x @ w["w1"] + w["b1"], 0) @ w["w2"] + w["b2"]
    assert out["logits"].shape == (50, 10) and out["logits"].dtype == np.float32
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-5, atol=1e-5)
    assert (out["logits"].argmax(1) == digits_weights["y"][:50]).mean() > 0.85


def test_kserve_unknown_model_is_a_404_with_a_hint(mlserver):
    client = KServeClient(Endpoint(mlserver, protocol="kserve", model="nope"))
    with pytest.raises(CloudResponseError) as info:
        client.infer({"pixels": np.zeros((1, 64), np.float32)}, deadline=Deadline(10))
    assert info.value.status == 404
    assert "model name" in info.value.hint


def test_kserve_needs_a_model_name():
    with pytest.raises(FallbackConfigError, match="model name"):
        KServeClient(Endpoint("http://127.0.0.1:1", protocol="kserve"))


def test_v2_tensor_codec_roundtrip():
    for array in (np.arange(6, dtype=np.int64).reshape(2, 3), np.ones((1, 2, 2), np.float16), np.array([True])):
        tensor = encode("t", array)
        back = decode(tensor)
        assert back.dtype == array.dtype and np.array_equal(back, array)
    assert encode("t", np.zeros(2, np.float32))["datatype"] == "FP32"
