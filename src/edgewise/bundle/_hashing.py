"""Streaming file digests: bundles, sources and sync all hash the same way."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 20  # 1 MiB: measured ~1.5 GB/s with hashlib here; larger chunks gain nothing.


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (GGUF files are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes_iter(parts: Iterable[bytes]) -> str:
    """Hex sha256 over a sequence of byte strings (used for digests of model weights)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def sha256_tree(root: str | Path) -> str:
    """Digest of a directory: relative paths and file digests, in sorted order.

    Used for multi-file sources (Hugging Face folders, .mlpackage). Names take part so
    that renaming a file changes the digest.
    """
    root = Path(root)
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        lines.append(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return sha256_bytes_iter(lines)
