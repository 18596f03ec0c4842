"""Quantize a GGUF file with llama.cpp's own quantizer, and say what it really did.

llama.cpp silently falls back to another type for tensors a K-quant cannot take (rows not a
multiple of 256: SmolLM2's 576-wide tensors), so a "Q4_K_M" file can come out mostly Q5_0
and larger than expected. The result is therefore read back and every tensor whose type is
not the requested family is reported, with bits per weight of the whole file.
"""

from __future__ import annotations

import ctypes
import math
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from edgewise.device_runtime import read_gguf_info, usable_cores
from edgewise.errors import ConversionError

# edgewise name -> (llama.cpp ftype constant, ggml tensor types that count as "what was asked")
QUANT_TYPES: dict[str, tuple[str, frozenset[str]]] = {
    "q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", frozenset({"Q8_0"})),
    "q6_k": ("LLAMA_FTYPE_MOSTLY_Q6_K", frozenset({"Q6_K"})),
    "q5_k_m": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", frozenset({"Q5_K", "Q6_K"})),
    "q5_k_s": ("LLAMA_FTYPE_MOSTLY_Q5_K_S", frozenset({"Q5_K", "Q6_K"})),
    "q4_k_m": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", frozenset({"Q4_K", "Q6_K"})),
    "q4_k_s": ("LLAMA_FTYPE_MOSTLY_Q4_K_S", frozenset({"Q4_K", "Q5_K", "Q6_K"})),
    "q3_k_m": ("LLAMA_FTYPE_MOSTLY_Q3_K_M", frozenset({"Q3_K", "Q4_K", "Q5_K", "Q6_K"})),
    "q2_k": ("LLAMA_FTYPE_MOSTLY_Q2_K", frozenset({"Q2_K", "Q3_K", "Q4_K", "Q6_K"})),
    "q5_0": ("LLAMA_FTYPE_MOSTLY_Q5_0", frozenset({"Q5_0"})),
    "q5_1": ("LLAMA_FTYPE_MOSTLY_Q5_1", frozenset({"Q5_1"})),
    "q4_0": ("LLAMA_FTYPE_MOSTLY_Q4_0", frozenset({"Q4_0"})),
    "q4_1": ("LLAMA_FTYPE_MOSTLY_Q4_1", frozenset({"Q4_1"})),
}
# The token embedding and the output layer get their own (usually higher) type by design.
_OWN_TYPE_TENSORS = ("token_embd.weight", "output.weight")


@dataclass(frozen=True)
class QuantizedGguf:
    path: Path
    qtype: str
    size_bytes: int
    bits_per_weight: float
    tensor_types: dict[str, int]  # ggml type -> number of 2-D weight tensors
    fallbacks: dict[str, int] = field(default_factory=dict)  # type used instead -> count
    fallback_tensors: int = 0
    weight_tensors: int = 0

    def describe_fallbacks(self) -> str:
        if not self.fallback_tensors:
            return ""
        used = ", ".join(f"{n} {t}" for t, n in sorted(self.fallbacks.items(), key=lambda kv: -kv[1]))
        return (f"{self.fallback_tensors} of {self.weight_tensors} weight tensors could not take "
                f"{self.qtype.upper()} and fell back ({used})")


def quantize_gguf(source: str | Path, dest: str | Path, qtype: str, *, threads: int | None = None) -> QuantizedGguf:
    """``source`` (F32/F16/BF16 GGUF) -> ``dest`` in ``qtype``, through llama.cpp's quantizer."""
    import llama_cpp

    key = qtype.lower()
    if key not in QUANT_TYPES:
        raise ConversionError(f"unknown GGUF quantization {qtype!r}",
                              hint=f"Use one of: {', '.join(QUANT_TYPES)}.")
    source, dest = Path(source), Path(dest)
    read_gguf_info(source)  # a damaged or non-GGUF source is refused here, never handed to llama.cpp
    partial = dest.with_name(dest.name + ".partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[key][0])
    params.nthread = threads or usable_cores()
    params.allow_requantize = False
    with _captured_output() as log:
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params))
    if rc != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        tail = " | ".join(log[0].strip().splitlines()[-3:])
        raise ConversionError(f"llama.cpp could not quantize {source.name} to {key} (code {rc}): {tail}",
                              hint="The source must be an F32/F16/BF16 GGUF written by a current converter.")
    os.replace(partial, dest)
    return describe_quantized(dest, key)


@contextmanager
def _captured_output() -> Iterator[list[str]]:
    """llama.cpp prints a line per tensor to the process's stdout/stderr: keep it in a file instead."""
    import sys
    import tempfile

    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "quantize.log"
        text: list[str] = [""]
        with open(path, "wb") as sink:
            saved = [os.dup(1), os.dup(2)]
            try:
                os.dup2(sink.fileno(), 1)
                os.dup2(sink.fileno(), 2)
                yield text
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)
                text[0] = path.read_text(errors="replace")


def describe_quantized(path: Path, qtype: str) -> QuantizedGguf:
    from gguf import GGMLQuantizationType

    info = read_gguf_info(path)  # the runtime's own bounds-checked header reader
    wanted = QUANT_TYPES[qtype][1]
    types: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    params = bits = 0
    weights = 0
    for tensor in info.tensors:
        params += math.prod(tensor.shape)
        bits += tensor.nbytes * 8
        if len(tensor.shape) < 2 or tensor.name in _OWN_TYPE_TENSORS:
            continue
        weights += 1
        kind = GGMLQuantizationType(tensor.type_id).name
        types[kind] += 1
        if kind not in wanted:
            fallbacks[kind] += 1
    return QuantizedGguf(path=path, qtype=qtype, size_bytes=path.stat().st_size,
                         bits_per_weight=bits / max(params, 1), tensor_types=dict(types),
                         fallbacks=dict(fallbacks), fallback_tensors=sum(fallbacks.values()), weight_tensors=weights)
