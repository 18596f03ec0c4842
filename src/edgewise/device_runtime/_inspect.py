"""Read a model file's signature without running it: works where the engine cannot predict.

A backend with an ``inspect(path)`` method (Core ML: spec only, any platform) is asked directly;
any other is opened on the CPU without warm-up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgewise.device_runtime._backend import backend_for
from edgewise.device_runtime._model import detect_format, load
from edgewise.errors import BundleNotFoundError


def inspect_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"format", "signature", ...}`` for a bare model file (or a Core ML package directory)."""
    path = Path(path)
    if not path.exists():
        raise BundleNotFoundError(f"{path} does not exist")
    fmt = detect_format(path)
    backend = backend_for(fmt)
    reader = getattr(backend, "inspect", None)
    if reader is not None:
        return {"format": fmt, "backend": backend.name, **reader(path)}
    model = load(path, device="cpu", warmup=False)
    try:
        return {"format": fmt, "backend": backend.name, "signature": model.signature}
    finally:
        model.close()
