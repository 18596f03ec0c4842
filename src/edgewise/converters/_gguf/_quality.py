"""What a quantization cost: perplexity, KL divergence and top-1 agreement against the reference.

The same measurements llama.cpp's quantize README tabulates (``llama-perplexity --kl-divergence``):
the text is cut into chunks of ``n_ctx`` tokens, the second half of each chunk is scored (so
every scored token has at least ``n_ctx/2`` tokens of context), and for each scored position
the candidate's next-token distribution is compared with the reference model's.
The math is pure numpy over logits; the engine only produces them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgewise.errors import DataError


@dataclass(frozen=True)
class Reference:
    """Log-probabilities of the reference model at the scored positions, and the tokens themselves."""

    chunks: list[list[int]]
    logprobs: list[np.ndarray]  # per chunk: (scored positions, vocab)
    ppl: float


@dataclass(frozen=True)
class Quality:
    ppl: float
    ppl_reference: float
    ppl_delta_pct: float
    kld_mean: float
    kld_p99: float
    top1_agreement: float
    tokens_scored: int

    def as_metrics(self) -> dict[str, float]:
        return {"ppl": self.ppl, "ppl_reference": self.ppl_reference, "ppl_delta_pct": self.ppl_delta_pct,
                "kld_mean": self.kld_mean, "kld_p99": self.kld_p99, "top1_agreement": self.top1_agreement,
                "tokens_scored": self.tokens_scored}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def perplexity(logprobs: list[np.ndarray], targets: list[np.ndarray]) -> float:
    nll = np.concatenate([-lp[np.arange(len(t)), t] for lp, t in zip(logprobs, targets, strict=True)])
    return float(np.exp(nll.mean()))


def compare_logprobs(reference: list[np.ndarray], candidate: list[np.ndarray]) -> tuple[float, float, float]:
    """Mean and 99th percentile of KL(reference || candidate) per position, and top-1 agreement."""
    klds, agree = [], []
    for ref, cand in zip(reference, candidate, strict=True):
        klds.append((np.exp(ref) * (ref - cand)).sum(axis=-1))
        agree.append(ref.argmax(axis=-1) == cand.argmax(axis=-1))
    kld = np.concatenate(klds)
    return float(kld.mean()), float(np.percentile(kld, 99)), float(np.concatenate(agree).mean())


def chunk_tokens(tokens: list[int], n_ctx: int, n_chunks: int) -> list[list[int]]:
    chunks = [tokens[i:i + n_ctx] for i in range(0, len(tokens) - n_ctx + 1, n_ctx)][:n_chunks]
    if not chunks:
        raise DataError(f"the evaluation text has {len(tokens)} tokens; at least {n_ctx} are needed",
                        hint="Point [data] eval_text at a longer text file, or lower [gguf] eval_ctx.")
    return chunks


class LogitsRunner:
    """A llama.cpp instance that returns the logits of every position of a chunk."""

    def __init__(self, path: Path, n_ctx: int, threads: int) -> None:
        import llama_cpp

        from edgewise.device_runtime import read_gguf_info

        self.info = read_gguf_info(path)
        self.n_ctx = n_ctx
        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                                   n_threads=threads, n_threads_batch=threads, verbose=False)

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def scored_logprobs(self, chunk: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(chunk)
        first = len(chunk) // 2
        # scores[i] predicts token i+1: positions first-1 .. n-2 predict tokens first .. n-1
        return log_softmax(np.asarray(self.llm.scores[first - 1:len(chunk) - 1]))

    def close(self) -> None:
        self.llm.close()


def targets_of(chunk: list[int]) -> np.ndarray:
    return np.asarray(chunk[len(chunk) // 2:], dtype=np.int64)


def measure_reference(path: Path, text: str, *, n_ctx: int, n_chunks: int, threads: int) -> Reference:
    runner = LogitsRunner(path, n_ctx, threads)
    try:
        chunks = chunk_tokens(runner.tokenize(text), n_ctx, n_chunks)
        logprobs = [runner.scored_logprobs(c) for c in chunks]
    finally:
        runner.close()
    return Reference(chunks, logprobs, perplexity(logprobs, [targets_of(c) for c in chunks]))


def measure_candidate(path: Path, reference: Reference, *, threads: int) -> Quality:
    n_ctx = len(reference.chunks[0])
    runner = LogitsRunner(path, n_ctx, threads)
    try:
        logprobs = [runner.scored_logprobs(c) for c in reference.chunks]
    finally:
        runner.close()
    ppl = perplexity(logprobs, [targets_of(c) for c in reference.chunks])
    kld, kld_p99, top1 = compare_logprobs(reference.logprobs, logprobs)
    return Quality(ppl=ppl, ppl_reference=reference.ppl, ppl_delta_pct=100.0 * (ppl / reference.ppl - 1.0),
                   kld_mean=kld, kld_p99=kld_p99, top1_agreement=top1,
                   tokens_scored=sum(len(lp) for lp in logprobs))


def default_eval_text() -> str:
    """Real English prose that ships with scikit-learn: its data sets' descriptions (~43 kB)."""
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "descr"
    return "\n\n".join(p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.rst")))


def decode_speed(path: Path, prompt: str, *, n_tokens: int, threads: int) -> float:
    """Greedy generation tokens/s of the file as an app would run it (no per-position logits kept)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=max(256, 2 * n_tokens), n_threads=threads, n_threads_batch=threads,
                          verbose=False)
    try:
        bias = {llm.token_eos(): -1e9}  # exactly n_tokens, however the model would like to stop
        llm.create_completion(prompt, max_tokens=4, temperature=0.0)  # warm-up
        start = time.perf_counter()
        out = llm.create_completion(prompt, max_tokens=n_tokens, temperature=0.0, logit_bias=bias)
        return out["usage"]["completion_tokens"] / (time.perf_counter() - start)
    finally:
        llm.close()


def parity_with_transformers(checkpoint_dir: Path, gguf_path: Path, prompt: str, *, threads: int,
                             greedy_tokens: int = 16) -> dict[str, float]:
    """The float GGUF against the checkpoint run by transformers: same tokens, same logits, same greedy text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    hf_ids = tokenizer(prompt)["input_ids"]
    runner = LogitsRunner(gguf_path, max(64, len(hf_ids) + greedy_tokens + 8), threads)
    try:
        ours = runner.llm.tokenize(prompt.encode("utf-8"), add_bos=runner.info.add_bos, special=False)
        runner.llm.reset()
        runner.llm.eval(hf_ids)
        gguf_logits = np.asarray(runner.llm.scores[:len(hf_ids)], dtype=np.float64)
        gguf_greedy = runner.llm.create_completion(hf_ids, max_tokens=greedy_tokens, temperature=0.0,
                                                   logit_bias={runner.llm.token_eos(): -1e9})["choices"][0]["text"]
    finally:
        runner.close()
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        ids = torch.tensor([hf_ids])
        hf_logits = model(ids).logits[0].double().numpy()
        bias = torch.zeros(hf_logits.shape[-1])
        bias[tokenizer.eos_token_id] = -1e9 if tokenizer.eos_token_id is not None else 0.0
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=greedy_tokens,
                             do_sample=False, min_new_tokens=greedy_tokens, pad_token_id=tokenizer.eos_token_id)
    hf_greedy = tokenizer.decode(out[0][len(hf_ids):], skip_special_tokens=True)
    common = 0
    for a, b in zip(gguf_greedy, hf_greedy, strict=False):
        if a != b:
            break
        common += 1
    return {
        "tokenizer_match": float(ours == hf_ids),
        "top1_agreement": float((gguf_logits.argmax(-1) == hf_logits.argmax(-1)).mean()),
        "max_abs_error": float(np.abs(gguf_logits - hf_logits).max()),
        "greedy_text_match": float(common / max(1, min(len(gguf_greedy), len(hf_greedy)))),
        "positions": len(hf_ids),
    }

