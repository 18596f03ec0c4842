"""Bundles on disk: open (verify schema and hashes) and build (write atomically).

A bundle is a directory: ``manifest.json`` plus the files it lists. Nothing else in the
directory is trusted or read. Building writes into a sibling temporary directory and
renames it into place, so a reader never sees half a bundle.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgewise._version import __version__
from edgewise.bundle._hashing import sha256_file
from edgewise.bundle.manifest import MANIFEST_NAME, FileEntry, Manifest, Sample, check_relative_path
from edgewise.errors import BundleNotFoundError, IntegrityError, ManifestError


class Bundle:
    """An opened, verified bundle. ``open`` checks every listed file's size and sha256."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = root
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
        root = Path(path)
        manifest_path = root / MANIFEST_NAME
        if not root.is_dir() or not manifest_path.is_file():
            raise BundleNotFoundError(f"{root} is not a bundle: no {MANIFEST_NAME} in it")
        try:
            raw = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{manifest_path} is not valid JSON: {exc}") from exc
        bundle = cls(root, Manifest.from_dict(raw))
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Raise IntegrityError naming the first file whose bytes differ from the manifest."""
        for entry in self.manifest.files:
            path = self.root / entry.path
            if not path.is_file():
                raise IntegrityError(
                    f"bundle file {entry.path!r} is missing from {self.root}",
                    path=entry.path, expected=entry.sha256, actual="missing",
                )
            size = path.stat().st_size
            if size != entry.size:
                raise IntegrityError(
                    f"bundle file {entry.path!r} has {size} bytes, the manifest says {entry.size} "
                    "(truncated or replaced)",
                    path=entry.path, expected=str(entry.size), actual=str(size),
                )
            actual = sha256_file(path)
            if actual != entry.sha256:
                raise IntegrityError(
                    f"bundle file {entry.path!r} has sha256 {actual[:16]}…, the manifest says "
                    f"{entry.sha256[:16]}… (corrupted or tampered)",
                    path=entry.path, expected=entry.sha256, actual=actual,
                )

    @property
    def model_path(self) -> Path:
        """The file (or directory, for .mlpackage) a runtime backend opens."""
        return self.root / self.manifest.entrypoint

    def load_sample(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The stored sample input and its expected output."""
        sample = self.manifest.sample
        if sample is None:
            raise ManifestError(f"bundle {self.manifest.name} has no sample input")

        def load(rel: str) -> np.ndarray:
            return np.load(self.root / rel, allow_pickle=False)

        return (
            {name: load(rel) for name, rel in sample.inputs.items()},
            {name: load(rel) for name, rel in sample.outputs.items()},
        )

    def __repr__(self) -> str:
        m = self.manifest
        return f"Bundle({m.name!r} {m.version} {m.format} {m.quantization.scheme} at {self.root})"


class BundleBuilder:
    """Collects files, then writes a bundle atomically with a manifest computed from them.

    Usage::

        builder = BundleBuilder()
        builder.add_file(onnx_path, "model.onnx")
        builder.add_sample({"x": x}, {"logits": y})
        bundle = builder.write(dest, manifest_without_files)
    """

    def __init__(self) -> None:
        self._files: dict[str, tuple[Path | None, bytes | None, str]] = {}
        self._sample: Sample | None = None

    def add_file(self, source: str | os.PathLike[str], rel: str, role: str = "model") -> None:
        check_relative_path(rel, "bundle file")
        self._files[rel] = (Path(source), None, role)

    def add_tree(self, source_dir: str | os.PathLike[str], rel: str, role: str = "model") -> None:
        """Add every file of a directory artifact (a Core ML .mlpackage, say)."""
        source_dir = Path(source_dir)
        for path in sorted(p for p in source_dir.rglob("*") if p.is_file()):
            self.add_file(path, f"{rel.rstrip('/')}/{path.relative_to(source_dir).as_posix()}", role)

    def add_bytes(self, data: bytes, rel: str, role: str = "extra") -> None:
        check_relative_path(rel, "bundle file")
        self._files[rel] = (None, data, role)

    def add_sample(
        self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
        *, rtol: float = 1e-3, atol: float = 1e-4,
    ) -> None:
        names: dict[str, dict[str, str]] = {"inputs": {}, "outputs": {}}
        for kind, arrays in (("inputs", inputs), ("outputs", outputs)):
            for index, (name, array) in enumerate(arrays.items()):
                rel = f"sample/{kind}_{index}.npy"
                buffer = _npy_bytes(np.asarray(array))
                self.add_bytes(buffer, rel, role="sample")
                names[kind][name] = rel
        self._sample = Sample(inputs=names["inputs"], outputs=names["outputs"], rtol=rtol, atol=atol)

    def write(self, dest: str | os.PathLike[str], manifest: Manifest | dict[str, Any]) -> Bundle:
        """Write files and manifest to ``dest`` (replacing a previous bundle there) and return it opened.

        ``manifest`` may leave ``files``, ``sample``, ``edgewise_version`` and ``created`` empty:
        they are filled from what was added.
        """
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            entries = []
            for rel, (source, data, role) in sorted(self._files.items()):
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if source is not None:
                    shutil.copyfile(source, target)
                else:
                    target.write_bytes(data or b"")
                entries.append(FileEntry(path=rel, sha256=sha256_file(target), size=target.stat().st_size, role=role))
            if isinstance(manifest, dict):
                manifest = Manifest.from_dict({**manifest, "files": [e.__dict__ for e in entries]})
            manifest = replace(
                manifest,
                files=tuple(entries),
                sample=self._sample or manifest.sample,
                edgewise_version=manifest.edgewise_version or __version__,
                created=manifest.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            )
            # Round-trip through the validator: a builder must never write a manifest a reader refuses.
            manifest = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
            (staging / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
            _replace_dir(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return Bundle(dest, manifest)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _replace_dir(staging: Path, dest: Path) -> None:
    """Move ``staging`` to ``dest``; an existing ``dest`` is swapped out, then removed."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        os.replace(staging, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, dest)
