"""Shared benchmark plumbing: interleaved timing and result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def interleaved_ratio(ours: Callable[[], Any], raw: Callable[[], Any], *, calls: int, rounds: int) -> dict:
    """Median per-call time of ``ours`` and ``raw``, measured in alternating rounds.

    Alternating (raw, ours, raw, ours, ...) cancels the slow drift of a shared 2-core machine that
    would bias two back-to-back measurements; the ratio of medians is what the goals compare.
    """
    for fn in (raw, ours):
        for _ in range(max(3, calls // 10)):
            fn()
    raw_times, our_times = [], []
    for _ in range(rounds):
        for fn, sink in ((raw, raw_times), (ours, our_times)):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            sink.append((time.perf_counter() - start) / calls)
    raw_s, our_s = statistics.median(raw_times), statistics.median(our_times)
    # Also the median of per-round ratios: each pair ran back to back, so it cancels the drift of a
    # shared machine that the ratio of medians only averages out.
    paired = statistics.median(o / r for r, o in zip(raw_times, our_times, strict=True))
    return {"raw_ms": 1e3 * raw_s, "edgewise_ms": 1e3 * our_s, "ratio": our_s / raw_s, "paired_ratio": paired}


def median_ms(fn: Callable[[], Any], *, calls: int, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return 1e3 * statistics.median(times)


def machine() -> dict[str, Any]:
    import onnxruntime

    from edgewise.device_runtime import probe

    return {"cpu": probe().cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__}


def write(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine(), **data}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return path


def table(rows: list[list[Any]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"{c:.4g}" if isinstance(c, float) else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def overhead_models(folder: Path) -> tuple[Path, Path]:
    """The two ONNX models the overhead benches time: the demo's MNIST CNN and a tiny MLP (worst case:
    the fixed per-call cost of a wrapper is largest next to a ~6 µs model)."""
    import numpy as np
    import torch

    from edgewise.converters._torch_export import export_torch_to_onnx
    from edgewise.demo.models import DigitsCNN

    cnn, mlp = folder / "cnn.onnx", folder / "mlp.onnx"
    export_torch_to_onnx(DigitsCNN().eval(), [np.zeros((2, 1, 28, 28), np.float32)], cnn,
                         input_names=["pixels"], output_names=["logits"])
    export_torch_to_onnx(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)),
                         [np.zeros((2, 64), np.float32)], mlp, input_names=["x"], output_names=["y"])
    return cnn, mlp
