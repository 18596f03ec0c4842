"""Ed25519 key files for the four TUF roles: plain files an operator can move to an HSM later.

Layout of a keys directory (``generate_keys``)::

    root-0.pem  root-0.pub.json  root-1.pem ...   targets-0.pem ...   snapshot-0.pem   timestamp-0.pem

``*.pem`` is the private key (PKCS8 PEM, unencrypted, mode 0600: protect the directory, or keep root
and targets keys offline); ``*.pub.json`` is securesystemslib's public key dict plus its ``keyid``,
what goes into root.json and what may be shared. The file name is only a convention: the publisher
matches keys to roles by keyid, so a rotated-in key may have any name.

Signing uses pyca/cryptography (securesystemslib's ``CryptoSigner``) when it is installed. Without it,
a pure-Python ed25519 (securesystemslib's vendored reference code) signs instead, with a warning: it is
correct and interoperable but neither fast nor side-channel hardened, so production publishers should
install ``cryptography``. Devices only *verify*, which securesystemslib does either way. Key files are
the same in both cases (ed25519 PKCS8 is a fixed 16-byte DER prefix plus the 32-byte seed).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from securesystemslib.exceptions import UnsupportedLibraryError
from securesystemslib.signer import Key, SecretsHandler, Signature, Signer, SSlibKey
from securesystemslib.signer._utils import compute_default_keyid

from edgewise.errors import SyncError

try:  # the fast, constant-time implementation
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from securesystemslib.signer import CryptoSigner
except ImportError:  # pragma: no cover - depends on the environment
    Ed25519PrivateKey = None  # type: ignore[assignment,misc]

ROLES = ("root", "targets", "snapshot", "timestamp")
PUBLIC_SUFFIX = ".pub.json"

_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")  # RFC 8410 ed25519 private key
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")  # RFC 8410 ed25519 public key
_log = logging.getLogger(__name__)


def public_path(private_path: Path) -> Path:
    """``targets-0.pem`` -> ``targets-0.pub.json``: the public half sits next to the private one."""
    return private_path.with_name(private_path.name.removesuffix(".pem") + PUBLIC_SUFFIX)


def generate_key(path: Path) -> SSlibKey:
    """Write one new ed25519 key pair at ``path`` (.pem) and its ``.pub.json``; never overwrite.

    Refusing to overwrite matters: replacing a key file that root still lists locks the publisher
    out of that role until a root rotation, which needs the other keys.
    """
    path = Path(path)
    pub = public_path(path)
    for existing in (path, pub):
        if existing.exists():
            raise SyncError(f"key file {existing} already exists", hint="Pick another name, or delete it on purpose.")
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = secrets.token_bytes(32)
    _write_private(path, _pem("PRIVATE KEY", _PKCS8_PREFIX + seed))
    key = _public_key(_public_bytes(seed))
    pub.write_text(json.dumps(public_key_dict(key), indent=2, sort_keys=True) + "\n")
    return key


def generate_keys(keys_dir: Path, *, root: int = 3, targets: int = 3, snapshot: int = 1, timestamp: int = 1) -> None:
    """Create ``<role>-<i>.pem`` / ``.pub.json`` for every role (3 root and 3 targets keys leave room for a
    threshold of 2 that survives one lost or compromised key)."""
    counts = {"root": root, "targets": targets, "snapshot": snapshot, "timestamp": timestamp}
    for role, count in counts.items():
        if count < 1:
            raise SyncError(f"role {role!r} needs at least one key, got {count}")
    keys_dir = Path(keys_dir)
    clashes = [p.name for p in _planned(keys_dir, counts) if p.exists() or public_path(p).exists()]
    if clashes:  # check all first: a half-written key set is worse than none
        raise SyncError(f"{keys_dir} already holds key files {clashes}",
                        hint="Use a new, empty keys directory; rotate keys with Publisher.rotate_keys.")
    for path in _planned(keys_dir, counts):
        generate_key(path)


def load_signer(path: Path) -> Signer:
    """A signer for the private key file ``path``; the public half comes from ``.pub.json`` when present
    (so a custom keyid is respected), else it is derived from the private key."""
    path = Path(path)
    seed = _read_seed(path)
    pub = public_path(path)
    public = load_public_key(pub) if pub.is_file() else _public_key(_public_bytes(seed))
    if public.keyval.get("public") != _public_bytes(seed).hex():
        raise SyncError(f"{path.name} and {pub.name} are not the same key pair",
                        hint="Restore the matching .pub.json, or delete it to derive it from the .pem.")
    if Ed25519PrivateKey is not None:
        with contextlib.suppress(UnsupportedLibraryError):  # a cryptography too old for securesystemslib
            return CryptoSigner(Ed25519PrivateKey.from_private_bytes(seed), public)
    return _PurePythonSigner(seed, public)


def load_public_key(path_or_pem: Path | str | bytes) -> Key:
    """A public key from a ``.pub.json`` file, a ``.pem`` file (public or private), or PEM text.

    Accepting the private ``.pem`` too lets a rotation name the same file it will sign with.
    """
    if isinstance(path_or_pem, bytes) or (isinstance(path_or_pem, str) and "-----BEGIN" in path_or_pem):
        text = path_or_pem.decode() if isinstance(path_or_pem, bytes) else path_or_pem
        return _key_from_pem(text, "PEM text")
    path = Path(path_or_pem)
    try:
        data = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SyncError(f"cannot read public key {path}: {exc}") from exc
    if path.name.endswith(".json"):
        return _key_from_dict(data, path)
    return _key_from_pem(data, str(path))


def public_key_dict(key: Key) -> dict[str, Any]:
    """securesystemslib's dict for ``key`` with the keyid added, so the file alone names the key."""
    return {"keyid": key.keyid, **key.to_dict()}


class _PurePythonSigner(Signer):
    """ed25519 signing without pyca/cryptography (securesystemslib's vendored reference implementation)."""

    _warned = False

    def __init__(self, seed: bytes, public_key: SSlibKey) -> None:
        self._seed = seed
        self._public_key = public_key
        if not _PurePythonSigner._warned:
            _PurePythonSigner._warned = True
            _log.warning("signing with pure-Python ed25519 (slow, not side-channel hardened); "
                         "install 'cryptography' on the publishing machine")

    @property
    def public_key(self) -> SSlibKey:
        return self._public_key

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri: str, public_key: Key,
                          secrets_handler: SecretsHandler | None = None) -> _PurePythonSigner:
        raise ValueError("load key files with edgewise.sync._keys.load_signer")

    def sign(self, payload: bytes) -> Signature:
        from securesystemslib._vendor.ed25519.ed25519 import signature_unsafe

        raw = signature_unsafe(payload, self._seed, bytes.fromhex(self._public_key.keyval["public"]))
        return Signature(self._public_key.keyid, raw.hex())


def _public_bytes(seed: bytes) -> bytes:
    if Ed25519PrivateKey is not None:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    from securesystemslib._vendor.ed25519.ed25519 import publickey_unsafe

    return publickey_unsafe(seed)


def _public_key(raw: bytes) -> SSlibKey:
    """The same key (and keyid) securesystemslib's ``SSlibKey.from_crypto`` would produce."""
    keyval = {"public": raw.hex()}
    return SSlibKey(compute_default_keyid("ed25519", "ed25519", keyval), "ed25519", "ed25519", keyval)


def _read_seed(path: Path) -> bytes:
    try:
        der = _unpem(path.read_text(), "PRIVATE KEY")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SyncError(f"cannot read private key {path}: {exc}",
                        hint="Key files are unencrypted ed25519 PKCS8 PEM, as generate_keys writes them.") from exc
    if len(der) != 48 or not der.startswith(_PKCS8_PREFIX):
        raise SyncError(f"{path} is not an unencrypted ed25519 PKCS8 key",
                        hint="Key files are unencrypted ed25519 PKCS8 PEM, as generate_keys writes them.")
    return der[len(_PKCS8_PREFIX):]


def _key_from_dict(text: str, path: Path) -> Key:
    try:
        raw = json.loads(text)
        keyid = raw.pop("keyid")
        return SSlibKey.from_dict(keyid, raw)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SyncError(f"{path} is not a public key file: {exc}") from exc


def _key_from_pem(text: str, where: str) -> Key:
    try:
        if "PRIVATE KEY" in text:
            der = _unpem(text, "PRIVATE KEY")
            if len(der) == 48 and der.startswith(_PKCS8_PREFIX):
                return _public_key(_public_bytes(der[len(_PKCS8_PREFIX):]))
        else:
            der = _unpem(text, "PUBLIC KEY")
            if len(der) == 44 and der.startswith(_SPKI_PREFIX):
                return _public_key(der[len(_SPKI_PREFIX):])
    except ValueError as exc:
        raise SyncError(f"{where} is not a usable PEM key: {exc}") from exc
    raise SyncError(f"{where} is not an ed25519 key", hint="edgewise repositories use ed25519 keys only.")


def _pem(label: str, der: bytes) -> bytes:
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return ("\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n").encode()


def _unpem(text: str, label: str) -> bytes:
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    if begin not in text or end not in text:
        raise ValueError(f"no {label} PEM block")
    body = text.split(begin, 1)[1].split(end, 1)[0]
    return base64.b64decode("".join(body.split()), validate=True)


def _planned(keys_dir: Path, counts: Mapping[str, int]) -> list[Path]:
    return [keys_dir / f"{role}-{i}.pem" for role, count in counts.items() for i in range(count)]


def _write_private(path: Path, pem: bytes) -> None:
    """Create with mode 0600 from the start: no window in which the key is readable by others."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
