"""The publisher: writes a TUF repository of model bundles as plain files any static HTTP server can serve.

Layout of ``repo_dir`` (serve the whole directory, or at least ``metadata/`` and ``targets/``)::

    trusted_root.json            1.root.json as created by ``init``: ship it inside the device image.
                                 Devices walk 1 -> 2 -> ... -> N.root.json from there, so it never needs
                                 updating after key rotations.
    publisher.json               publisher settings (expiry periods); not secret, devices never read it
    metadata/1.root.json ...     every root version (the client needs the whole chain)
    metadata/timestamp.json      the only unversioned file: the entry point, re-signed most often
    metadata/<v>.snapshot.json   consistent snapshots: old versions stay, so a device mid-update
    metadata/<v>.targets.json    never sees a mix of old and new files
    targets/releases/<channel>/<sha256>.<model>.json          release record (``Release``)
    targets/models/<model>/<version>/<sha256>.<model>-<version>.tar   bundle archive

Target files carry their sha256 in the name (ngclient's ``prefix_targets_with_hash``), so files are
immutable and a CDN may cache them forever. Every write is a temporary file plus ``os.replace``, in the
order targets -> targets.json -> snapshot -> timestamp: a crash leaves the previous timestamp (and so the
previous consistent repository) in force. One publisher process at a time per repository.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Role,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from edgewise.bundle import Bundle
from edgewise.errors import SyncError
from edgewise.sync._archive import pack_bundle
from edgewise.sync._keys import ROLES, load_public_key, load_signer, public_path
from edgewise.sync._release import Release, archive_target_path, check_name, release_target_path
from edgewise.sync._rollout import version_key

__all__ = ["DEFAULT_EXPIRY_DAYS", "DEFAULT_THRESHOLDS", "Publisher"]

DEFAULT_THRESHOLDS: Mapping[str, int] = {"root": 2, "targets": 2, "snapshot": 1, "timestamp": 1}
DEFAULT_EXPIRY_DAYS: Mapping[str, float] = {"root": 365, "targets": 90, "snapshot": 7, "timestamp": 1}
SETTINGS_NAME = "publisher.json"

_log = logging.getLogger(__name__)
_SERIALIZER = JSONSerializer(compact=False)


class Publisher:
    """One TUF repository on disk, signed with key files from ``keys_dir`` (see ``edgewise.sync._keys``).

    Every public method re-reads the repository first, so several short-lived ``Publisher`` objects (one
    per CLI command) see each other's work; none holds state that could go stale.
    """

    def __init__(self, repo_dir: Path, keys_dir: Path, *, signers: Mapping[str, Sequence[str]] | None = None):
        """Open an existing repository (create one with ``Publisher.init``).

        ``signers`` names, per role, the key files (``"targets-0.pem"``, relative to ``keys_dir``) that sign
        new versions of that role. Default: every key file whose key root currently lists for the role.
        Explicit signers below the threshold are allowed (with a warning): the signatures may be completed
        elsewhere, and tests use it to forge the "one key compromised" case.
        """
        self.repo_dir = Path(repo_dir)
        self.keys_dir = Path(keys_dir)
        self._explicit: dict[str, list[Path]] = {}
        for role, names in (signers or {}).items():
            if role not in ROLES:
                raise SyncError(f"signers: unknown role {role!r}; roles are {', '.join(ROLES)}")
            self._explicit[role] = [self._key_file(name) for name in names]
        self._settings = _read_settings(self.repo_dir)
        self._load()

    # -- creating -------------------------------------------------------------------------------------------

    @classmethod
    def init(cls, repo_dir: Path, keys_dir: Path, *, thresholds: Mapping[str, int] | None = None,
             expiry_days: Mapping[str, float] | None = None) -> Publisher:
        """Create a repository: root lists every ``<role>-*.pem`` in ``keys_dir``; empty targets.

        Refuses an existing repository, because a second ``1.root.json`` with other keys would make every
        device shipped with the first one reject all updates.
        """
        repo_dir, keys_dir = Path(repo_dir), Path(keys_dir)
        if (repo_dir / "metadata" / "1.root.json").exists():
            raise SyncError(f"{repo_dir} already holds a TUF repository",
                            hint="Open it with Publisher(repo_dir, keys_dir); rotate keys with rotate_keys.")
        limits = _merged(DEFAULT_THRESHOLDS, thresholds, "thresholds")
        periods = _merged(DEFAULT_EXPIRY_DAYS, expiry_days, "expiry_days")
        root = Root(expires=_expires(periods["root"]), consistent_snapshot=True)
        for role in ROLES:
            _add_role_keys(root, role, keys_dir, int(limits[role]))
        repo_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(repo_dir / SETTINGS_NAME, json.dumps({"expiry_days": periods}, indent=2).encode() + b"\n")
        signed: dict[str, Signed] = {
            "targets": Targets(expires=_expires(periods["targets"])),
            "snapshot": Snapshot(expires=_expires(periods["snapshot"])),
            "timestamp": Timestamp(expires=_expires(periods["timestamp"])),
            "root": root,
        }
        for role, payload in signed.items():  # timestamp before root is fine: nothing is served before both
            md = Metadata(payload)
            for path in _role_key_files(role, keys_dir):
                md.sign(load_signer(path), append=True)
            _atomic_write(repo_dir / "metadata" / _metadata_name(role, payload.version), md.to_bytes(_SERIALIZER))
        shutil.copyfile(repo_dir / "metadata" / "1.root.json", repo_dir / "trusted_root.json")
        return cls(repo_dir, keys_dir)

    @property
    def trusted_root(self) -> Path:
        """The initial root to ship with devices (``trusted_root.json``, a copy of ``metadata/1.root.json``)."""
        return self.repo_dir / "trusted_root.json"

    # -- publishing -----------------------------------------------------------------------------------------

    def publish(self, bundle_dir: Path, *, channel: str = "stable", rollout: float = 100.0,
                shadow: bool = False) -> Release:
        """Verify the bundle, upload its archive and point ``channel``'s release record at it.

        A version not newer than the channel's current one is refused: devices never downgrade, so it
        would be dead weight at best. Re-publishing the identical bytes is allowed (to change rollout or
        shadow) and is a no-op when nothing changes.
        """
        check_name(channel, "channel")
        _check_rollout(rollout)
        self._load()
        bundle_dir = Path(bundle_dir)
        manifest = Bundle.open(bundle_dir).manifest
        archive_path = archive_target_path(manifest.name, manifest.version)
        fd, tmp_name = tempfile.mkstemp(prefix=".pack-", suffix=".tar", dir=self.repo_dir)
        os.close(fd)
        staged = Path(tmp_name)
        try:
            pack_bundle(bundle_dir, staged)
            archive = TargetFile.from_file(archive_path, str(staged), ["sha256"])
            current = self._release(channel, manifest.name)
            self._check_newer(archive, current, manifest.version)
            release = Release(
                model=manifest.name, version=manifest.version, channel=channel, format=manifest.format,
                archive=archive_path, archive_length=archive.length, rollout=float(rollout),
                min_runtime_version=manifest.requirements.min_runtime_version,
                requirements={"backends": list(manifest.requirements.backends),
                              "min_ram_bytes": manifest.requirements.min_ram_bytes},
                shadow=shadow, published=_now().isoformat(),
            )
            if current is not None and _same_release(current, release):
                return current
            dest = self._target_file(archive)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, dest)
        finally:
            staged.unlink(missing_ok=True)
        self._put_release(release, archive)
        self._commit(targets=True)
        return release

    def set_rollout(self, model: str, channel: str, rollout: float) -> Release:
        """Rewrite ``channel``'s record for ``model`` with a new percentage (a staged rollout grows).

        Cohorts are stable per device, so raising the percentage only adds devices; lowering it stops
        new installs but does not roll back devices that already updated.
        """
        _check_rollout(rollout)
        self._load()
        current = self._release(channel, model)
        if current is None:
            raise SyncError(f"no release of {model!r} on channel {channel!r}", hint="Publish it first.")
        if float(rollout) == float(current.rollout):
            return current
        release = dataclasses.replace(current, rollout=float(rollout))
        self._put_release(release, self._targets.signed.targets[current.archive])
        self._commit(targets=True)
        return release

    def refresh_timestamp(self, *, expires_in: datetime.timedelta | None = None) -> None:
        """Sign a new timestamp (run it more often than the timestamp expiry, e.g. from cron).

        Snapshot and targets are renewed too when less than half their period is left, so an idle
        repository does not expire under the devices. ``expires_in`` overrides the timestamp's period;
        it may be negative (tests of the freeze attack).
        """
        self._load()
        renew = [role for role in ("targets", "snapshot") if self._due(role)]
        if "targets" in renew:
            self._commit(targets=True, timestamp_expires_in=expires_in)
        else:
            self._commit(targets=False, snapshot="snapshot" in renew, timestamp_expires_in=expires_in)

    # -- keys -----------------------------------------------------------------------------------------------

    def rotate_keys(self, role: str, *, remove: Sequence[str] = (), add: Sequence[Path] = (),
                    threshold: int | None = None) -> None:
        """Change ``role``'s keys in a new root version, then re-sign that role's metadata with them.

        ``remove`` names key files (``"targets-0.pem"``) or keyids; ``add`` names key files (``.pem`` or
        ``.pub.json``), copied into ``keys_dir`` when they live elsewhere so later publishers find them.
        The new root is signed by the old root keys and the new ones (the spec: a device checks it against
        both thresholds), and is refused before anything is written if either threshold is not met.
        """
        if role not in ROLES:
            raise SyncError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        self._load()
        old = self._root.signed
        new = copy.deepcopy(old)
        for item in remove:
            keyid = self._keyid(item)
            if keyid not in new.roles[role].keyids:
                raise SyncError(f"{item} is not a {role} key in the current root")
            new.revoke_key(keyid, role)
        for path in add:
            new.add_key(load_public_key(self._adopt_key(Path(path))), role)
        if threshold is not None:
            new.roles[role].threshold = threshold
        _check_threshold(new, role)
        if role != "root":
            self._check_can_sign(new, role)
        new.version += 1
        new.expires = _expires(self._settings["root"])
        self._write_root(old, new)
        if role == "targets":
            self._commit(targets=True)
        elif role in ("snapshot", "timestamp"):
            self._commit(targets=False)

    # -- internals: state -----------------------------------------------------------------------------------

    def _load(self) -> None:
        """Read the newest root and the timestamp -> snapshot -> targets chain it points at."""
        meta = self.repo_dir / "metadata"
        versions = [int(p.name.split(".")[0]) for p in meta.glob("*.root.json") if p.name.split(".")[0].isdigit()]
        if not versions:
            raise SyncError(f"{self.repo_dir} is not a TUF repository (no metadata/1.root.json)",
                            hint="Create one with Publisher.init (or `edgewise` publish init).")
        try:
            self._root: Metadata[Root] = Metadata[Root].from_file(str(meta / f"{max(versions)}.root.json"))
            self._timestamp: Metadata[Timestamp] = Metadata[Timestamp].from_file(str(meta / "timestamp.json"))
            snapshot_file = _metadata_name("snapshot", self._timestamp.signed.snapshot_meta.version)
            self._snapshot: Metadata[Snapshot] = Metadata[Snapshot].from_file(str(meta / snapshot_file))
            targets_file = _metadata_name("targets", self._snapshot.signed.meta["targets.json"].version)
            self._targets: Metadata[Targets] = Metadata[Targets].from_file(str(meta / targets_file))
        except (OSError, DeserializationError, KeyError) as exc:
            raise SyncError(f"repository {self.repo_dir} is incomplete or damaged: {exc}",
                            hint="Restore metadata/ from a backup; do not hand-edit signed files.") from exc

    def _release(self, channel: str, model: str) -> Release | None:
        """The channel's current record, read back from our own target file and checked against its hash."""
        info = self._targets.signed.targets.get(release_target_path(channel, model))
        if info is None:
            return None
        data = self._target_file(info).read_bytes()
        try:
            info.verify_length_and_hashes(data)
        except RepositoryError as exc:
            raise SyncError(f"target file for {info.path} was modified on disk: {exc}",
                            hint="Restore targets/ from a backup before publishing again.") from exc
        return Release.from_json(data)

    def _check_newer(self, archive: TargetFile, current: Release | None, version: str) -> None:
        existing = self._targets.signed.targets.get(archive.path)
        if existing is not None and existing.hashes != archive.hashes:
            raise SyncError(f"{archive.path} was already published with different bytes",
                            hint="A published version is immutable: give the bundle a new version.")
        if current is None or (current.version == version and existing is not None):
            return
        if version_key(version) <= version_key(current.version):
            raise SyncError(f"{current.model} {version} is not newer than {current.version} on "
                            f"channel {current.channel!r}",
                            hint="Devices never downgrade: publish a higher version (or a fix-forward).")

    def _put_release(self, release: Release, archive: TargetFile) -> None:
        """Record + archive custom metadata; the archive's copy mirrors the latest record pointing at it."""
        targets = self._targets.signed.targets
        archive = copy.copy(archive)
        archive.unrecognized_fields = {**archive.unrecognized_fields, "custom": _custom(release)}
        targets[archive.path] = archive
        data = release.to_json()
        record = TargetFile.from_data(release_target_path(release.channel, release.model), data, ["sha256"])
        record.unrecognized_fields["custom"] = _custom(release)
        _atomic_write(self._target_file(record), data)
        targets[record.path] = record

    def _target_file(self, info: TargetFile) -> Path:
        """``targets/<dir>/<sha256>.<name>``: the hash-prefixed name ngclient asks for."""
        return self.repo_dir / "targets" / info.get_prefixed_paths()[0]

    def _due(self, role: str) -> bool:
        md = self._targets if role == "targets" else self._snapshot
        left = md.signed.expires - _now()
        return left < datetime.timedelta(days=self._settings[role]) / 2

    # -- internals: signing and writing ---------------------------------------------------------------------

    def _commit(self, *, targets: bool, snapshot: bool = True,
                timestamp_expires_in: datetime.timedelta | None = None) -> None:
        """Bump, sign and write targets (optional) -> snapshot (optional) -> timestamp, in that order."""
        if targets:
            self._bump(self._targets, "targets")
            self._snapshot.signed.meta["targets.json"] = MetaFile(version=self._targets.signed.version)
        if targets or snapshot:
            self._bump(self._snapshot, "snapshot")
            self._timestamp.signed.snapshot_meta = MetaFile(version=self._snapshot.signed.version)
        self._bump(self._timestamp, "timestamp", timestamp_expires_in)

    def _bump(self, md: Metadata[Any], role: str, expires_in: datetime.timedelta | None = None) -> None:
        md.signed.version += 1
        md.signed.expires = _now() + expires_in if expires_in is not None else _expires(self._settings[role])
        self._sign(md, role)
        _atomic_write(self.repo_dir / "metadata" / _metadata_name(role, md.signed.version), md.to_bytes(_SERIALIZER))

    def _sign(self, md: Metadata[Any], role: str) -> None:
        """Sign with the role's signers; below threshold is an error unless the signers were chosen explicitly."""
        md.signatures.clear()
        for path in self._signer_files(self._root.signed, role):
            md.sign(load_signer(path), append=True)
        result = self._root.signed.get_verification_result(role, md.signed_bytes, md.signatures)
        if result.verified:
            return
        message = (f"{role} v{md.signed.version} has {len(result.signed)} of the {result.threshold} "
                   "signatures devices require")
        if role not in self._explicit:
            raise SyncError(message, hint=f"Put the missing {role} key files in {self.keys_dir}.")
        _log.warning("%s; devices will reject it until it is signed by enough keys", message)

    def _write_root(self, old: Root, new: Root) -> None:
        md = Metadata(new)
        for path in self._signer_files(old, "root", also=new):
            md.sign(load_signer(path), append=True)
        result = new.get_root_verification_result(old, md.signed_bytes, md.signatures)
        if not result.verified:
            raise SyncError(f"root v{new.version} lacks signatures: it needs {old.roles['root'].threshold} of the "
                            f"old root keys and {new.roles['root'].threshold} of the new ones",
                            hint=f"Put enough root key files (old and new) in {self.keys_dir}.")
        _atomic_write(self.repo_dir / "metadata" / _metadata_name("root", new.version), md.to_bytes(_SERIALIZER))
        self._root = md

    def _signer_files(self, root: Root, role: str, *, also: Root | None = None) -> list[Path]:
        if role in self._explicit:
            return self._explicit[role]
        wanted = set(root.roles[role].keyids) | (set(also.roles[role].keyids) if also else set())
        return [path for keyid, path in sorted(self._keyring().items()) if keyid in wanted]

    def _check_can_sign(self, root: Root, role: str) -> None:
        """Before writing a rotated root: can we sign the role with its new keys right after?"""
        if role in self._explicit:
            return
        keyring = self._keyring()
        have = [k for k in root.roles[role].keyids if k in keyring]
        if len(have) < root.roles[role].threshold:
            raise SyncError(f"only {len(have)} private {role} keys for a threshold of {root.roles[role].threshold}",
                            hint=f"Add the new keys as .pem files (in {self.keys_dir} or by path).")

    # -- internals: key files -------------------------------------------------------------------------------

    def _keyring(self) -> dict[str, Path]:
        """keyid -> private key file, for every ``*.pem`` in ``keys_dir`` (roles are matched by keyid)."""
        return {load_signer(path).public_key.keyid: path for path in sorted(self.keys_dir.glob("*.pem"))}

    def _key_file(self, name: str | Path) -> Path:
        path = Path(name) if Path(name).is_absolute() else self.keys_dir / name
        if not path.is_file():
            raise SyncError(f"key file {path} does not exist")
        return path

    def _keyid(self, item: str) -> str:
        """A key file name (or path) or a keyid, as ``rotate_keys(remove=...)`` accepts either."""
        candidate = Path(item) if Path(item).is_absolute() else self.keys_dir / item
        if candidate.is_file():
            return load_public_key(candidate).keyid
        return item

    def _adopt_key(self, path: Path) -> Path:
        """Copy a new key pair into ``keys_dir`` (same names) so the next publisher can sign with it."""
        private = path.with_name(path.name.removesuffix(".pub.json") + ".pem") if path.name.endswith(".json") \
            else path
        if not path.is_file():
            raise SyncError(f"key file {path} does not exist")
        if private.is_file() and private.resolve().parent != self.keys_dir.resolve():
            for source in (private, public_path(private)):
                dest = self.keys_dir / source.name
                if dest.exists() and dest.read_bytes() != source.read_bytes():
                    raise SyncError(f"{dest} exists and is a different key", hint="Rename the new key file.")
                if source.is_file() and not dest.exists():
                    shutil.copyfile(source, dest)
                    dest.chmod(0o600 if source == private else 0o644)
        return path


# -- module helpers ------------------------------------------------------------------------------------------


def _now() -> datetime.datetime:
    """UTC, whole seconds: TUF serializes ``expires`` without fractions."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _expires(days: float) -> datetime.datetime:
    return _now() + datetime.timedelta(days=days)


def _metadata_name(role: str, version: int) -> str:
    return "timestamp.json" if role == "timestamp" else f"{version}.{role}.json"


def _merged(defaults: Mapping[str, Any], given: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    unknown = set(given or {}) - set(ROLES)
    if unknown:
        raise SyncError(f"{what}: unknown roles {sorted(unknown)}; roles are {', '.join(ROLES)}")
    return {**defaults, **(given or {})}


def _read_settings(repo_dir: Path) -> dict[str, float]:
    path = repo_dir / SETTINGS_NAME
    if not path.is_file():
        return dict(DEFAULT_EXPIRY_DAYS)
    try:
        return {**DEFAULT_EXPIRY_DAYS, **json.loads(path.read_text())["expiry_days"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise SyncError(f"{path} is not valid publisher settings: {exc}") from exc


def _add_role_keys(root: Root, role: str, keys_dir: Path, threshold: int) -> None:
    files = sorted(keys_dir.glob(f"{role}-*.pem"))
    if not files:
        raise SyncError(f"no {role} keys ({role}-*.pem) in {keys_dir}", hint="Create them with generate_keys.")
    for path in files:
        pub = public_path(path)
        root.add_key(load_public_key(pub if pub.is_file() else path), role)
    root.roles[role] = Role(root.roles[role].keyids, threshold)
    _check_threshold(root, role)


def _check_threshold(root: Root, role: str) -> None:
    """A threshold above the key count can never be met; a threshold below 1 means no security at all."""
    count, threshold = len(root.roles[role].keyids), root.roles[role].threshold
    if not 1 <= threshold <= count:
        raise SyncError(f"{role}: threshold {threshold} with {count} keys cannot work",
                        hint="A threshold must be between 1 and the number of keys of the role.")


def _role_key_files(role: str, keys_dir: Path) -> list[Path]:
    """At init, a role's keys are exactly its ``<role>-*.pem`` files (``_add_role_keys`` listed them)."""
    return sorted(keys_dir.glob(f"{role}-*.pem"))


def _custom(release: Release) -> dict[str, Any]:
    """``release.custom()`` for TUF metadata, floats as decimal strings (``"12.5"``).

    TUF signs canonical JSON, which has no floats; the release record target itself keeps numbers
    and stays the authoritative copy (``Release.from_json``).
    """
    def plain(value: Any) -> Any:
        if isinstance(value, float):
            return repr(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(release.custom())


def _same_release(a: Release, b: Release) -> bool:
    return dataclasses.replace(a, published="") == dataclasses.replace(b, published="")


def _check_rollout(rollout: float) -> None:
    if not 0.0 <= float(rollout) <= 100.0:
        raise SyncError(f"rollout {rollout} is outside 0..100", hint="Give a percentage of devices, 0 to 100.")


def _atomic_write(path: Path, data: bytes) -> None:
    """Temporary file in the same directory + fsync + ``os.replace``: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

