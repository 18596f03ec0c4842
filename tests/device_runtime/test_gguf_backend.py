"""GGUF language models through device_runtime.load: chat, streaming, token counts, context limits."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("llama_cpp")

from edgewise import device_runtime
from edgewise.errors import ContextOverflowError, InputError

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm(smollm2_f16):
    """SmolLM2-135M-Instruct converted by edgewise (F16): the shipped Q4_1 file answers this question wrongly."""
    with device_runtime.load(smollm2_f16, threads=2, engine_options={"n_ctx": 512}) as model:
        yield model


def test_load_returns_text_model_with_placement(smollm):
    assert isinstance(smollm, device_runtime.TextModel)
    assert smollm.backend == "llama.cpp" and smollm.device == "cpu"
    assert smollm.context_length == 512
    assert smollm.offload.n_gpu_layers == 0 and "CPU" in smollm.offload.reason
    assert smollm.info.architecture == "llama"


def test_chat_answers_from_the_files_template(smollm):
    prompt = smollm.render_chat(QUESTION)
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
    answer = smollm.chat(QUESTION, max_tokens=24)
    assert "Paris" in answer.text
    assert answer.prompt_tokens == smollm.count_chat_tokens(QUESTION)
    assert answer.finish_reason == "stop" and 0 < answer.completion_tokens < 24


def test_streaming_gives_the_same_text(smollm):
    whole = smollm.chat(QUESTION, max_tokens=24)
    stream = smollm.chat(QUESTION, max_tokens=24, stream=True)
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == whole.text
    assert stream.completion is not None and stream.completion.text == whole.text
    assert stream.completion.finish_reason == "stop"


def test_generate_stops_at_max_tokens(smollm):
    result = smollm.generate("Once upon a time", max_tokens=5)
    assert result.completion_tokens == 5 and result.finish_reason == "length"


def test_context_overflow_carries_the_numbers(smollm):
    long_prompt = "word " * 600
    with pytest.raises(ContextOverflowError) as err:
        smollm.generate(long_prompt, max_tokens=16)
    assert err.value.prompt_tokens == smollm.count_tokens(long_prompt) > 512
    assert err.value.requested_tokens == 16 and err.value.context_size == 512
    fits = "word " * 100
    with pytest.raises(ContextOverflowError):  # the prompt fits, prompt + requested tokens do not
        smollm.generate(fits, max_tokens=512 - smollm.count_tokens(fits) + 1)


def test_bad_messages_are_input_errors(smollm):
    with pytest.raises(InputError):
        smollm.chat([])
    with pytest.raises(InputError, match="role"):
        smollm.chat([{"content": "hi"}])


def test_concurrent_callers_are_serialised(smollm):
    answers: list[str] = []
    threads = [threading.Thread(target=lambda: answers.append(smollm.chat(QUESTION, max_tokens=16).text))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(answers) == 3 and len(set(answers)) == 1  # greedy: same answer, no corrupted context


def test_model_without_chat_template(tmp_path):
    from edgewise.converters.gguf import hf_to_gguf
    from tests.gguf_models import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "hf")
    (ckpt / "tokenizer_config.json").write_text('{"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}')
    hf_to_gguf(ckpt, tmp_path / "tiny.gguf", dtype="f16")
    with device_runtime.load(tmp_path / "tiny.gguf", threads=2) as model:
        assert model.generate("The quick", max_tokens=3).completion_tokens == 3
        with pytest.raises(InputError, match="no chat template"):
            model.chat(QUESTION)


def test_strict_gpu_request_is_refused_on_cpu_build():
    import llama_cpp

    from edgewise.demo.llm import smollm2_gguf
    from edgewise.errors import PlacementError

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama.cpp build has GPU offload")
    with pytest.raises(PlacementError):
        device_runtime.load(smollm2_gguf(), device="gpu", strict=True)
    model = device_runtime.load(smollm2_gguf(), device="gpu", engine_options={"n_ctx": 128})
    assert model.device == "cpu" and model.placement.fell_back
    model.close()
