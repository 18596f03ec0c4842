"""The whole LLM path on a real model: SmolLM2-135M-Instruct checkpoint -> GGUF F16/Q8_0/Q4_K_M, gated, chatted with."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp")

from edgewise import device_runtime
from edgewise.converters import convert, parse_recipe
from edgewise.errors import GateFailedError

FACTS = [("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
         ("What is the capital of Germany?", "Berlin"), ("How many days are in a week?", "7")]


@pytest.mark.slow
def test_smollm2_recipe_converts_quantizes_gates_and_chats(smollm2_checkpoint_dir, tmp_path):
    recipe = parse_recipe({
        "model": {"name": "smollm2", "version": "1.0.0", "task": "text-generation", "source": "huggingface",
                  "path": str(smollm2_checkpoint_dir)},
        "data": {},
        "targets": [{"format": "gguf", "variants": ["f16", "q8_0", "q4_k_m"]}],
        "gguf": {"eval_ctx": 128, "eval_chunks": 2, "speed_tokens": 16},
        "budgets": {"q8_0": {"kld_max": 0.02, "top1_agreement_min": 0.9},
                    "q4_k_m": {"kld_max": 0.001}},  # deliberately impossible: the gate must say so
    }, base_dir=tmp_path, output_dir=tmp_path / "dist")
    with pytest.raises(GateFailedError) as failed:
        convert(recipe, progress=False)
    assert "gguf/q4_k_m" in failed.value.table and "kld_mean" in failed.value.table
    report = json.loads((tmp_path / "dist" / "report.json").read_text())
    rows = {row["artifact"]: row for row in report["artifacts"]}
    f16, q8, q4 = rows["gguf/f16"], rows["gguf/q8_0"], rows["gguf/q4_k_m"]
    # float file vs transformers on the same prompt
    assert f16["passed"] and f16["metrics"]["tokenizer_match"] == 1.0
    assert f16["metrics"]["top1_agreement"] >= 0.9 and f16["metrics"]["greedy_text_match"] == 1.0
    # quantized files vs the float file: Q8_0 close, Q4_K_M measurably worse, sizes as the types say
    assert q8["passed"] and q8["metrics"]["kld_mean"] < q4["metrics"]["kld_mean"]
    assert 1.8 < q8["size_ratio"] < 1.95 and 8.4 < q8["metrics"]["bits_per_weight"] < 8.6
    assert not q4["passed"] and q4["misses"][0]["metric"] == "kld_mean"
    # SmolLM2's 576-wide rows cannot take Q4_K: llama.cpp's fallbacks are reported, not hidden
    assert q4["metrics"]["fallback_tensors"] > 100 and any("fell back" in n for n in q4["notes"])
    assert "KLD" in (tmp_path / "dist" / "report.md").read_text()
    for variant in ("f16", "q8_0"):
        with device_runtime.load(tmp_path / "dist" / f"smollm2-gguf-{variant}", threads=2,
                                 engine_options={"n_ctx": 256}) as model:
            assert model.bundle.manifest.metrics["quality"]["tokens_per_s"] > 0
            for question, answer in FACTS:
                reply = model.chat([{"role": "user", "content": question}], max_tokens=24).text
                assert answer in reply, (variant, question, reply)
