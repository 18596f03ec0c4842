"""The on-device model store: versioned bundles, an atomic "current" pointer, rollback.

Layout under ``root``::

    staging/<random>/            unpacking and deleting happen here, never in models/
    models/<model>/<version>/    one verified bundle per version (``.bad`` inside marks a failed one)
    current/<model>.json         {"version": ..., "previous": ...}, replaced atomically
    .lock                        flock: one writer at a time, released by the kernel if the writer dies
    observe/                     prediction log + stats snapshots of observed models (device_runtime.observed)

Why it survives a process killed at any instant:

* a bundle becomes visible in ``models/`` only by one ``rename`` of a complete, fsynced staging
  directory, and a version is *served* only once the pointer names it;
* the pointer is switched by write-temp, fsync, rename, fsync-directory, so a reader sees the
  old pointer or the new one, never a torn one;
* everything an interrupted run leaves behind (staging directories, temporary pointer files) is
  removed when the next ``ModelStore`` opens the root, and a half-installed version left in
  ``models/`` is either reused (it re-verifies) or replaced by the next install.

Failure handling is the store's job, not the app's: ``install_*`` runs the bundle's stored sample
before switching and marks a failing version bad; ``load`` re-checks what it serves and, when the
current version no longer loads (file corrupted on disk, runtime changed), marks it bad and falls
back to the previous version — then to any other good version — recording what it did in
``last_event``. A corrupt pointer file is reported by ``current``/``rollback``/``prune``
(``CorruptStoreError``) but ``load`` recovers from it and ``install_*`` overwrites it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgewise import device_runtime
from edgewise.bundle import MANIFEST_NAME, Bundle, Manifest
from edgewise.errors import (
    CorruptStoreError,
    EdgewiseError,
    NoUsableModelError,
    PostInstallCheckError,
    SyncError,
)
from edgewise.sync._archive import unpack_bundle
from edgewise.sync._release import check_name

try:  # POSIX: an advisory lock the kernel drops when the holder dies, so a kill never wedges the store
    import fcntl
except ImportError:  # pragma: no cover - Windows: single-writer is then the caller's responsibility
    fcntl = None  # type: ignore[assignment]

__all__ = ["CorruptStoreError", "Installed", "ModelStore", "NoUsableModelError", "PostInstallCheckError", "StoreEvent"]

_BAD_MARK = ".bad"
OBSERVE_DIR = "observe"  # <root>/observe: the prediction log and stats snapshots (edgewise stats STORE)


@dataclass(frozen=True)
class Installed:
    """What the pointer says: the version served for ``model``, where it lives, and the fallback."""

    model: str
    version: str
    path: Path
    previous: str | None


@dataclass(frozen=True)
class StoreEvent:
    """A pointer change the store made on its own or on request, for logs and telemetry.

    ``kind`` is "installed", "rollback" (asked for), "auto_rollback" (current failed at load) or
    "recovered" (the pointer was missing or unreadable and load picked a version).
    """

    kind: str
    model: str
    version: str
    replaced: str | None
    reason: str = ""


class ModelStore:
    """Versioned bundles under ``root`` with an atomic current pointer per model.

    Opening a store cleans what an interrupted install left behind. All mutations take an
    exclusive file lock, so a background updater and the app may share one root.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._staging = self.root / "staging"
        self._models = self.root / "models"
        self._pointers = self.root / "current"
        for folder in (self._staging, self._models, self._pointers):
            folder.mkdir(parents=True, exist_ok=True)
        self._mutex = threading.RLock()
        self._depth = 0
        self._lock_file: Any = None
        self.last_event: StoreEvent | None = None
        self.observe_dir = self.root / OBSERVE_DIR
        with self._locked():
            self._clean_leftovers()

    # ----------------------------------------------------------------- install

    def install_archive(
        self, archive: Path, *, expected_model: str | None = None, expected_version: str | None = None,
        max_bytes: int = 8 << 30, check: bool = True, switch: bool = True,
    ) -> Installed:
        """Unpack a bundle archive, verify it, check it, then make it current.

        ``expected_*`` come from the (signed) release record: an archive holding another model or
        version is refused. Raises ``PostInstallCheckError`` (version marked bad, pointer untouched)
        when the bundle does not reproduce its stored sample. ``switch=False`` stages it: installed and
        checked but not served (a shadow candidate) until ``promote``.
        """
        with self._locked():
            staged = self._new_staging_path()
            try:
                unpack_bundle(Path(archive), staged, max_bytes=max_bytes)
                return self._install_staged(staged, expected_model, expected_version, check, switch)
            finally:
                _remove_tree(staged)

    def install_dir(
        self, bundle_dir: Path, *, expected_model: str | None = None, expected_version: str | None = None,
        check: bool = True,
    ) -> Installed:
        """Like ``install_archive`` from an unpacked bundle; only the files its manifest lists are copied."""
        with self._locked():
            staged = self._new_staging_path()
            try:
                _copy_bundle(Path(bundle_dir), staged)
                return self._install_staged(staged, expected_model, expected_version, check)
            finally:
                _remove_tree(staged)

    def _install_staged(
        self, staged: Path, expected_model: str | None, expected_version: str | None, check: bool,
        switch: bool = True,
    ) -> Installed:
        (staged / _BAD_MARK).unlink(missing_ok=True)  # a bad mark is the store's to set, never the archive's
        _fsync_tree(staged)
        manifest = _open_bundle(staged, "the update").manifest
        model, version = _check_identity(manifest, expected_model, expected_version)
        dest = self._place(staged, model, version, manifest)
        if check:
            self._check_or_mark_bad(model, version, dest)
        if not switch:
            now = self.current(model) if self._pointer_path(model).exists() else None
            return Installed(model, version, dest, now.version if now else None)
        return self._switch(model, version, kind="installed")

    def promote(self, model: str, version: str, *, reason: str = "") -> Installed:
        """Serve a staged version (``install_archive(..., switch=False)``): the atomic switch, nothing else."""
        with self._locked():
            if not self._servable(model, version):
                raise SyncError(f"cannot promote {model} {version}: it is not installed or it is marked bad",
                                hint="Stage it first (SyncClient.stage), and let it pass its post-install check.")
            return self._switch(model, version, kind="promoted", reason=reason)

    def _place(self, staged: Path, model: str, version: str, manifest: Manifest) -> Path:
        """Move the staged bundle to models/<model>/<version>, reusing an identical good copy already there."""
        dest = self._version_dir(model, version)
        if dest.exists():
            if self._reusable(model, version, manifest):
                return dest
            self._discard(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, dest)
        _fsync_dir(dest.parent)
        return dest

    def _reusable(self, model: str, version: str, manifest: Manifest) -> bool:
        if self.is_bad(model, version):
            return False  # installing again is an explicit retry: replace and re-check
        try:
            existing = Bundle.open(self._version_dir(model, version))
        except EdgewiseError:
            return False
        return existing.manifest.files == manifest.files

    def _check_or_mark_bad(self, model: str, version: str, path: Path) -> None:
        try:
            _load_and_check(path, {}).close()
        except PostInstallCheckError as exc:
            self._mark_bad(model, version, exc.reason)
            raise PostInstallCheckError(
                f"{model} {version} failed its post-install check: {exc.reason}; it is marked bad and "
                "the current model is unchanged", model=model, version=version, reason=exc.reason,
            ) from exc.__cause__

    # ----------------------------------------------------------------- pointer

    def current(self, model: str) -> Installed | None:
        """The version served for ``model``, None if none was installed; CorruptStoreError if unreadable."""
        check_name(model, "model name")
        pointer = self._read_pointer(model)
        if pointer is None:
            return None
        version, previous = pointer
        return Installed(model, version, self._version_dir(model, version), previous)

    def rollback(self, model: str) -> Installed:
        """Serve the previous version again. The version left stays as the new previous unless it is bad."""
        with self._locked():
            now = self.current(model)
            if now is None:
                raise SyncError(f"cannot roll back {model}: no version of it is installed")
            target = now.previous
            if target is None or not self._servable(model, target):
                raise SyncError(
                    f"cannot roll back {model} {now.version}: no good previous version is kept",
                    hint="Install the version you want instead.",
                )
            keep = None if self.is_bad(model, now.version) else now.version
            self._write_pointer(model, target, keep)
            self.last_event = StoreEvent("rollback", model, target, now.version)
            return Installed(model, target, self._version_dir(model, target), keep)

    def _switch(self, model: str, version: str, *, kind: str, reason: str = "") -> Installed:
        """Point ``model`` at ``version``; the version served until now becomes previous if it is still good."""
        try:
            pointer = self._read_pointer(model)
        except CorruptStoreError:
            pointer = None  # installing is how a corrupt pointer gets repaired
        old, old_previous = pointer if pointer else (None, None)
        if old == version:
            return Installed(model, version, self._version_dir(model, version), old_previous)
        previous = next((v for v in (old, old_previous) if v and v != version and self._servable(model, v)), None)
        self._write_pointer(model, version, previous)
        self.last_event = StoreEvent(kind, model, version, old, reason)
        return Installed(model, version, self._version_dir(model, version), previous)

    def _read_pointer(self, model: str) -> tuple[str, str | None] | None:
        path = self._pointer_path(model)
        try:
            raw = json.loads(path.read_bytes())
            version = check_name(raw["version"], "version")
            previous = raw.get("previous")
            if previous is not None:
                check_name(previous, "version")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, AttributeError, SyncError) as exc:
            raise CorruptStoreError(f"the current-version pointer {path} is unreadable ({exc!r})") from exc
        return version, previous

    def _write_pointer(self, model: str, version: str, previous: str | None) -> None:
        _write_json_atomic(self._pointer_path(model), {"version": version, "previous": previous})

    # ----------------------------------------------------------------- serving

    def load(self, model: str, **load_kwargs: Any) -> device_runtime.Model:
        """Load the current version, re-checked against its sample; fall back automatically if it fails.

        A failing version is marked bad and the pointer moves to the version that loads (previous
        first, then other good versions, newest first). ``last_event`` is None when the current
        version served, else says what changed. ``load_kwargs`` go to ``device_runtime.load``.
        """
        check_name(model, "model name")
        with self._locked():
            self.last_event = None
            failures: list[str] = []
            current, candidates = self._load_candidates(model, failures)
            for version in candidates:
                try:
                    loaded = _load_and_check(self._version_dir(model, version), load_kwargs)
                except PostInstallCheckError as exc:
                    self._mark_bad(model, version, exc.reason)
                    failures.append(f"{version}: {exc.reason}")
                    continue
                if version != current:
                    kind = "auto_rollback" if current else "recovered"
                    self._switch(model, version, kind=kind, reason="; ".join(failures))
                return loaded
            detail = "; ".join(failures) or "nothing is installed"
            raise NoUsableModelError(f"no installed version of {model} can be served ({detail})")

    def _load_candidates(self, model: str, failures: list[str]) -> tuple[str | None, list[str]]:
        """The pointer's version, then its previous, then every other good version, newest first."""
        try:
            pointer = self._read_pointer(model)
        except CorruptStoreError as exc:
            failures.append(exc.message)
            pointer = None
        current, previous = pointer if pointer else (None, None)
        ordered = [current, previous, *reversed(self.versions(model))]
        candidates: list[str] = []
        for version in ordered:
            if version is None or version in candidates:
                continue
            if self.is_bad(model, version):
                failures.append(f"{version}: marked bad")
            elif self._version_dir(model, version).is_dir():
                candidates.append(version)
        return current, candidates

    # ----------------------------------------------------------------- inventory

    def models(self) -> list[str]:
        """Models with at least one version on disk."""
        return sorted(p.name for p in _plain_dirs(self._models))

    def versions(self, model: str) -> list[str]:
        """Versions on disk (good or bad), oldest install first."""
        check_name(model, "model name")
        dirs = _plain_dirs(self._models / model)
        return [p.name for p in sorted(dirs, key=lambda p: (_installed_at(p), p.name))]

    def is_bad(self, model: str, version: str) -> bool:
        """True once a version failed its check; reinstalling it is the only way to clear the mark."""
        return (self._version_dir(model, version) / _BAD_MARK).exists()

    def prune(self, model: str, keep: int = 2) -> list[str]:
        """Delete old versions, never the current or previous one; keep at most ``keep`` versions in all.

        Returns the removed versions. Refuses (CorruptStoreError) while the pointer is unreadable, since
        it could not tell which version is in use.
        """
        if keep < 0:
            raise ValueError(f"keep must be >= 0, not {keep}")
        with self._locked():
            now = self.current(model)
            protected = {v for v in (now.version, now.previous) if v} if now else set()
            others = [v for v in reversed(self.versions(model)) if v not in protected]
            doomed = others[max(0, keep - len(protected)):]
            for version in doomed:
                self._discard(self._version_dir(model, version))
            return doomed

    # ----------------------------------------------------------------- internals

    def _servable(self, model: str, version: str) -> bool:
        return self._version_dir(model, version).is_dir() and not self.is_bad(model, version)

    def _mark_bad(self, model: str, version: str, reason: str) -> None:
        """Existence is the mark: a kill while writing the reason still leaves the version marked."""
        mark = self._version_dir(model, version) / _BAD_MARK
        with open(mark, "w", encoding="utf-8") as handle:
            json.dump({"reason": reason}, handle)
            handle.flush()
            os.fsync(handle.fileno())

    def _discard(self, path: Path) -> None:
        """Rename out of models/ first (atomic), then delete: a half-deleted version is never visible."""
        trash = self._new_staging_path()
        os.replace(path, trash)
        _fsync_dir(path.parent)
        _remove_tree(trash)

    def _clean_leftovers(self) -> None:
        for entry in self._staging.iterdir():
            _remove_tree(entry)
        for entry in self._pointers.glob(".*.tmp"):
            entry.unlink(missing_ok=True)

    def _new_staging_path(self) -> Path:
        return self._staging / secrets.token_hex(8)

    def _version_dir(self, model: str, version: str) -> Path:
        return self._models / check_name(model, "model name") / check_name(version, "version")

    def _pointer_path(self, model: str) -> Path:
        return self._pointers / f"{check_name(model, 'model name')}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Re-entrant within this object; exclusive across processes through ``root/.lock``."""
        with self._mutex:
            if self._depth == 0 and fcntl is not None:
                self._lock_file = open(self.root / ".lock", "a+b")  # noqa: SIM115 - held across the block
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_file is not None:
                    self._lock_file.close()  # closing releases the flock
                    self._lock_file = None


# --------------------------------------------------------------------- checks (pure-ish helpers)


def _check_identity(manifest: Manifest, expected_model: str | None, expected_version: str | None) -> tuple[str, str]:
    """Name and version become path segments and must match what the signed release announced."""
    model = check_name(manifest.name, "bundle model name")
    version = check_name(manifest.version, "bundle version")
    for what, found, wanted in (("model", model, expected_model), ("version", version, expected_version)):
        if wanted is not None and found != wanted:
            raise SyncError(
                f"the update holds {what} {found!r} but the release announced {wanted!r}; refusing to install it",
                hint="The release record and its archive disagree: republish the release.",
            )
    return model, version


def _load_and_check(path: Path, load_kwargs: dict[str, Any]) -> device_runtime.Model:
    """Load (hashes verified) and reproduce the stored sample; PostInstallCheckError says why not."""
    version = path.name
    try:
        model = device_runtime.load(path, **load_kwargs)
    except Exception as exc:  # any failure to load means "do not serve this", whatever raised it
        raise PostInstallCheckError(
            f"{path.parent.name} {version} does not load", model=path.parent.name, version=version,
            reason=f"load failed: {_describe(exc)}",
        ) from exc
    try:
        mismatch = _sample_mismatch(model)
    except Exception as exc:
        mismatch = f"running the sample failed: {_describe(exc)}"
    if mismatch:
        model.close()
        raise PostInstallCheckError(
            f"{path.parent.name} {version}: {mismatch}", model=path.parent.name, version=version, reason=mismatch,
        )
    return model


def _sample_mismatch(model: device_runtime.Model) -> str | None:
    """None when outputs match the stored sample within its rtol/atol; a bundle without one is load-checked only."""
    bundle = model.bundle
    if bundle is None or bundle.manifest.sample is None:
        return None
    sample = bundle.manifest.sample
    inputs, expected = bundle.load_sample()
    outputs = model.run(inputs)
    for name, want in expected.items():
        got = outputs.get(name)
        if got is None:
            return f"output {name!r} is missing (got {sorted(outputs)})"
        got = np.asarray(got)
        if got.shape != want.shape:
            return f"output {name!r} has shape {got.shape}, the sample expects {want.shape}"
        if not np.allclose(got, want, rtol=sample.rtol, atol=sample.atol):
            worst = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
            return (f"output {name!r} differs from the stored sample by up to {worst:.3g} "
                    f"(rtol={sample.rtol}, atol={sample.atol})")
    return None


def _describe(exc: BaseException) -> str:
    return exc.message if isinstance(exc, EdgewiseError) else f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------- file-system helpers


def _open_bundle(path: Path, what: str) -> Bundle:
    try:
        return Bundle.open(path)
    except EdgewiseError as exc:
        raise SyncError(f"{what} is not a valid bundle: {exc.message}", hint=exc.hint) from exc


def _copy_bundle(source: Path, dest: Path) -> None:
    """Copy manifest.json and the files it lists (nothing else in a bundle directory is trusted)."""
    bundle = _open_bundle(source, f"{source}")
    dest.mkdir(parents=True)
    for rel in [MANIFEST_NAME, *(entry.path for entry in bundle.manifest.files)]:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, target)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Temp file, fsync, rename, fsync the directory: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(json.dumps(data, sort_keys=True).encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_tree(root: Path) -> None:
    """Unpacked bytes reach the disk before the rename that publishes them (power loss, not only kills)."""
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # pragma: no cover - directories cannot be opened for fsync there
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and _is_plain(p.name)]


def _installed_at(version_dir: Path) -> int:
    """The manifest's mtime: written when the version was unpacked, unlike the directory's (a bad mark bumps it)."""
    try:
        return (version_dir / MANIFEST_NAME).stat().st_mtime_ns
    except OSError:
        return 0


def _is_plain(name: str) -> bool:
    try:
        check_name(name, "name")
    except SyncError:
        return False
    return True


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)
