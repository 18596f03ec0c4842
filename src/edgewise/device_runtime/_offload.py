"""How many transformer layers to put on the GPU: a pure decision over sizes.

llama.cpp offloads the first ``n_gpu_layers`` repeating blocks (and, with one more, the output
layer). Too many and loading fails or the GPU pages; too few wastes the accelerator. The plan
counts each layer's weights plus its share of the KV cache against the free memory the device
reports, keeps headroom for compute buffers, and says in words what it chose and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

HEADROOM_FRACTION = 0.10
HEADROOM_MIN_BYTES = 256 << 20  # compute buffers, CUDA context, fragmentation


@dataclass(frozen=True)
class OffloadPlan:
    n_gpu_layers: int  # value for llama.cpp (block_count + 1 = everything incl. the output layer)
    layers_on_gpu: int
    total_layers: int
    reason: str


def kv_cache_bytes_per_layer(n_ctx: int, n_kv_heads: int, head_dim: int, bytes_per_value: int = 2) -> int:
    """K and V for ``n_ctx`` positions of one layer (f16 cache by default)."""
    return 2 * n_ctx * n_kv_heads * head_dim * bytes_per_value


def plan_offload(layer_bytes: Sequence[int], other_bytes: int, kv_per_layer: int, free_bytes: int | None,
                 *, gpu_offload: bool = True) -> OffloadPlan:
    """Fit as many layers as free GPU memory takes; ``free_bytes=None`` means no GPU to ask."""
    total = len(layer_bytes)
    if not gpu_offload:
        return OffloadPlan(0, 0, total, "this llama.cpp build has no GPU offload: all layers on the CPU")
    if free_bytes is None or free_bytes <= 0:
        return OffloadPlan(0, 0, total, "no GPU memory reported: all layers on the CPU")
    budget = free_bytes - max(HEADROOM_MIN_BYTES, int(free_bytes * HEADROOM_FRACTION))
    used = 0
    fitted = 0
    for size in layer_bytes:
        if used + size + kv_per_layer > budget:
            break
        used += size + kv_per_layer
        fitted += 1
    need_all = sum(layer_bytes) + kv_per_layer * total + other_bytes
    if fitted == total and used + other_bytes <= budget:
        return OffloadPlan(total + 1, total, total,
                           f"all {total} layers and the output layer fit: {_mib(need_all)} of {_mib(free_bytes)} free")
    if fitted == 0:
        return OffloadPlan(0, 0, total, f"not even one layer fits in {_mib(free_bytes)} free GPU memory: CPU only")
    return OffloadPlan(fitted, fitted, total,
                       f"{fitted} of {total} layers fit in {_mib(free_bytes)} free GPU memory "
                       f"(all would need {_mib(need_all)}); the rest run on the CPU")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"
