"""GPU layer planning is a pure decision: tested for every memory situation without a GPU."""

from edgewise.device_runtime._offload import kv_cache_bytes_per_layer, plan_offload

MIB = 1 << 20


def test_everything_fits():
    plan = plan_offload([100 * MIB] * 30, 50 * MIB, 10 * MIB, 24_000 * MIB)
    assert plan.n_gpu_layers == 31 and plan.layers_on_gpu == 30
    assert "all 30 layers" in plan.reason


def test_partial_fit_counts_kv_and_headroom():
    # 1 GiB free: headroom 256 MiB -> 768 MiB budget; each layer 100 + 10 MiB -> 6 layers
    plan = plan_offload([100 * MIB] * 30, 50 * MIB, 10 * MIB, 1024 * MIB)
    assert plan.n_gpu_layers == 6 and "6 of 30" in plan.reason


def test_no_gpu_or_no_memory():
    assert plan_offload([MIB] * 4, MIB, MIB, None).n_gpu_layers == 0
    assert plan_offload([MIB] * 4, MIB, MIB, 8 << 30, gpu_offload=False).n_gpu_layers == 0
    assert plan_offload([900 * MIB] * 4, MIB, MIB, 1024 * MIB).n_gpu_layers == 0


def test_layers_fit_but_output_layer_does_not():
    plan = plan_offload([100 * MIB] * 4, 2000 * MIB, 0, 1024 * MIB)
    assert plan.n_gpu_layers == 4 and plan.layers_on_gpu == 4  # blocks only, output layer on the CPU


def test_kv_cache_size():
    # SmolLM2-135M: 3 KV heads x 64 dims, f16, 2048 positions -> 1.5 MiB per layer for K and V together
    assert kv_cache_bytes_per_layer(2048, 3, 64) == 2 * 2048 * 3 * 64 * 2
