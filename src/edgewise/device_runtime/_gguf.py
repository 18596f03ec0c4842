"""llama.cpp (through llama-cpp-python) as the device backend for GGUF language models.

The file is checked by ``_gguf_check`` before llama.cpp maps it (a damaged header must not
take the app down). GPU offload is planned from the file's per-layer sizes and the GPU's free
memory (``_offload``), and what was chosen is kept in the placement's words.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import llama_cpp

from edgewise.bundle import Signature
from edgewise.device_runtime._backend import LoadOptions
from edgewise.device_runtime._devices import usable_cores
from edgewise.device_runtime._gguf_check import GgufInfo, read_gguf_info
from edgewise.device_runtime._offload import OffloadPlan, kv_cache_bytes_per_layer, plan_offload
from edgewise.device_runtime._placement import Accelerator
from edgewise.errors import ArtifactError, InputError

DEFAULT_N_CTX = 2048


class LlamaCppBackend:
    name = "llama.cpp"
    formats = ("gguf",)

    def version(self) -> str:
        return str(llama_cpp.__version__)

    def accelerators(self) -> list[Accelerator]:
        found = []
        if llama_cpp.llama_supports_gpu_offload():
            found.append(Accelerator(self.name, "gpu-offload", "gpu", "gpu",
                                     detail="llama.cpp GPU offload (layers chosen to fit free memory)"))
        found.append(Accelerator(self.name, "cpu", "cpu", "cpu", detail="llama.cpp CPU (ggml)"))
        return found

    def open(self, path: Path, accelerator: Accelerator, options: LoadOptions) -> LlamaCppSession:
        info = read_gguf_info(path)
        if not info.architecture:
            raise ArtifactError(f"{path.name} has no general.architecture: not a llama.cpp model file")
        engine = dict(options.engine_options)
        n_ctx = int(engine.pop("n_ctx", 0) or min(info.context_length or DEFAULT_N_CTX, DEFAULT_N_CTX))
        requested_layers = engine.pop("n_gpu_layers", "auto")
        if accelerator.kind == "cpu":
            plan = OffloadPlan(0, 0, info.block_count, "CPU placement: no layers offloaded")
        elif requested_layers == "auto":
            plan = _auto_plan(info, n_ctx)
        else:
            layers = int(requested_layers)
            plan = OffloadPlan(layers, min(layers, info.block_count), info.block_count, f"n_gpu_layers={layers} asked")
        if accelerator.kind != "cpu" and plan.n_gpu_layers == 0:
            raise RuntimeError(plan.reason)  # the loader records it and falls back to the CPU placement
        threads = options.threads or engine.pop("n_threads", None) or usable_cores()
        try:
            llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_gpu_layers=plan.n_gpu_layers, n_threads=threads,
                                  n_threads_batch=threads, verbose=bool(engine.pop("verbose", False)), **engine)
        except TypeError as exc:
            raise InputError(f"unknown llama.cpp option in engine_options: {exc}") from exc
        except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
            raise ArtifactError(f"llama.cpp could not load {path.name}: {exc}") from exc
        return LlamaCppSession(llm, info, plan, threads)


class LlamaCppSession:
    """One loaded model and its context. llama.cpp contexts are not thread-safe: ``lock`` guards it."""

    task = "text-generation"
    signature = Signature(inputs=(), outputs=())

    def __init__(self, llm: Any, info: GgufInfo, plan: OffloadPlan, threads: int) -> None:
        self.llm = llm
        self.info = info
        self.offload = plan
        self.threads = threads
        self.lock = threading.Lock()
        self.accelerator = f"gpu ({plan.layers_on_gpu}/{plan.total_layers} layers)" if plan.n_gpu_layers else "cpu"

    def warm_up(self) -> None:
        """One decode step: a GPU that accepted the weights but cannot compute fails here, not later."""
        with self.lock:
            token = self.llm.token_bos() if self.llm.token_bos() >= 0 else 0
            self.llm.reset()
            self.llm.eval([token])
            self.llm.reset()

    def run(self, feed: dict) -> dict:  # pragma: no cover - the tensor API does not apply
        raise InputError("a GGUF language model takes text: use generate() or chat()")

    def close(self) -> None:
        close = getattr(self.llm, "close", None)
        if close is not None:
            close()


def _auto_plan(info: GgufInfo, n_ctx: int) -> OffloadPlan:
    layers, other = info.layer_bytes()
    heads = int(info.arch_value("attention.head_count", 1) or 1)
    kv_heads = int(info.arch_value("attention.head_count_kv", heads) or heads)
    head_dim = int(info.arch_value("attention.key_length", 0) or
                   int(info.arch_value("embedding_length", 0) or 0) // heads)
    kv = kv_cache_bytes_per_layer(n_ctx, kv_heads, head_dim)
    return plan_offload(layers, other, kv, _free_gpu_bytes(), gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()))


def _free_gpu_bytes() -> int | None:
    """Free memory of the first GPU, as ggml's backend registry reports it (None when unknown).

    llama-cpp-python does not bind ggml's device API, so it is called in the libggml that
    llama-cpp-python itself loaded (same process, same devices).
    """
    import ctypes

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    for name in ("libggml.so", "libggml.dylib", "ggml.dll"):
        if (lib_dir / name).exists():
            break
    else:
        return None
    try:
        ggml = ctypes.CDLL(str(lib_dir / name))
        base = ctypes.CDLL(str(lib_dir / name.replace("ggml", "ggml-base")))
        ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
        ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
        ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        base.ggml_backend_dev_type.restype = ctypes.c_int
        base.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        base.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                                 ctypes.POINTER(ctypes.c_size_t)]
        for index in range(ggml.ggml_backend_dev_count()):
            dev = ggml.ggml_backend_dev_get(index)
            if base.ggml_backend_dev_type(dev) in (1, 2):  # GGML_BACKEND_DEVICE_TYPE_GPU, _IGPU
                free, total = ctypes.c_size_t(), ctypes.c_size_t()
                base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
                return int(free.value)
    except (OSError, AttributeError):
        return None
    return None

