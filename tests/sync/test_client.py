"""The sync client against a real repository on a real local HTTP server: updates, TUF's attacks,
resume. In every failure case the installed model stays current and keeps working."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgewise.errors import (
    ArtifactVerificationError,
    RepositoryUnreachableError,
    SlowRetrievalError,
    SyncError,
    UntrustedMetadataError,
)
from edgewise.sync._fetcher import HttpxFetcher
from edgewise.sync._keys import generate_key
from edgewise.sync._rollout import DeviceProfile
from edgewise.sync.client import SyncClient
from edgewise.sync.publisher import Publisher


def client_for(repo, server, tmp_path: Path, **kwargs) -> SyncClient:
    return SyncClient(server.url, tmp_path / "device", DeviceProfile("device-1"), trusted_root=repo.root /
                      "trusted_root.json", **kwargs)


def assert_serving(client: SyncClient, version: str) -> None:
    """The store's current model is ``version`` and it loads and reproduces its sample."""
    current = client.store.current("digits")
    assert current is not None and current.version == version
    model = client.store.load("digits")
    inputs, expected = model.bundle.load_sample()
    np.testing.assert_allclose(model.run(inputs)["y"], expected["y"], rtol=1e-4, atol=1e-5)


@pytest.fixture
def installed(repo, server, tmp_path) -> SyncClient:
    """A device with digits 1.0.0 installed through the client."""
    client = client_for(repo, server, tmp_path)
    result = client.update("digits")
    assert result.updated and result.installed.version == "1.0.0"
    return client


def publish(repo, version: str, **kwargs) -> None:
    Publisher(repo.root, repo.keys, **kwargs).publish(repo.bundles[version], channel="stable")


def test_update_installs_new_version_and_keeps_previous(repo, server, installed):
    publish(repo, "1.1.0")
    check = installed.check("digits")
    assert check.decision.apply and check.release.version == "1.1.0" and check.installed == "1.0.0"
    result = installed.update("digits")
    assert result.updated and result.installed.previous == "1.0.0"
    assert_serving(installed, "1.1.0")
    assert not installed.update("digits").updated  # nothing new: a no-op
    installed.rollback("digits")
    assert_serving(installed, "1.0.0")


def test_rollout_percentage_and_download_hook(repo, server, tmp_path, installed):
    Publisher(repo.root, repo.keys).publish(repo.bundles["1.1.0"], channel="stable", rollout=0.0)
    result = installed.update("digits")
    assert not result.updated and "rollout is at 0 %" in result.reason
    Publisher(repo.root, repo.keys).set_rollout("digits", "stable", 100.0)
    deferred = client_for(repo, server, tmp_path, download_allowed=lambda release: False)
    assert "deferred" in deferred.update("digits").reason
    assert installed.update("digits").updated


# --- the attacks The Update Framework names ----------------------------------------------------

def test_arbitrary_artifact_tampered_target_is_refused(repo, server, installed):
    publish(repo, "1.1.0")
    archive = next((repo.root / "targets" / "models" / "digits" / "1.1.0").glob("*.tar"))
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(ArtifactVerificationError, match="does not match its signed length/hashes"):
        installed.update("digits")
    assert_serving(installed, "1.0.0")


def test_tampered_metadata_is_refused(repo, server, installed):
    publish(repo, "1.1.0")
    targets = max((repo.root / "metadata").glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
    data = json.loads(targets.read_text())
    for info in data["signed"]["targets"].values():
        info.setdefault("custom", {})["rollout"] = "100"  # e.g. force a staged release onto every device
    targets.write_text(json.dumps(data))
    with pytest.raises(UntrustedMetadataError) as info:
        installed.update("digits")
    assert info.value.kind in ("UnsignedMetadataError", "LengthOrHashMismatchError")
    assert_serving(installed, "1.0.0")


def test_rollback_to_older_metadata_is_refused(repo, server, installed):
    old_timestamp = (repo.root / "metadata" / "timestamp.json").read_bytes()
    publish(repo, "1.1.0")
    installed.check("digits")  # the device has now seen the newer timestamp
    (repo.root / "metadata" / "timestamp.json").write_bytes(old_timestamp)
    with pytest.raises(UntrustedMetadataError) as info:
        installed.update("digits")
    assert info.value.kind == "BadVersionNumberError"
    assert_serving(installed, "1.0.0")


def test_indefinite_freeze_expired_timestamp_is_refused(repo, server, installed):
    Publisher(repo.root, repo.keys).refresh_timestamp(expires_in=dt.timedelta(seconds=-1))
    with pytest.raises(UntrustedMetadataError) as info:
        installed.update("digits")
    assert info.value.kind == "ExpiredMetadataError"
    assert_serving(installed, "1.0.0")


def test_mix_and_match_is_refused(repo, server, installed):
    publish(repo, "1.1.0")
    versions = sorted((repo.root / "metadata").glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
    newest, older = versions[-1], versions[-2]
    shutil.copyfile(older, newest)  # the snapshot names the new targets version; the file is the old one
    with pytest.raises(UntrustedMetadataError) as info:
        installed.update("digits")
    assert info.value.kind in ("BadVersionNumberError", "LengthOrHashMismatchError")
    assert_serving(installed, "1.0.0")


def test_fast_forward_then_recovery_by_rotating_the_timestamp_key(repo, server, installed, tmp_path):
    from tuf.api.metadata import Metadata, Timestamp

    from edgewise.sync._keys import load_signer

    # An attacker holding the timestamp key pushes a huge version; the device accepts it (validly signed).
    path = repo.root / "metadata" / "timestamp.json"
    evil = Metadata[Timestamp].from_bytes(path.read_bytes())
    evil.signed.version = 1_000_000
    evil.signatures.clear()
    evil.sign(load_signer(repo.keys / "timestamp-0.pem"))
    honest = path.read_bytes()
    path.write_bytes(evil.to_bytes())
    installed.check("digits")
    path.write_bytes(honest)
    publish(repo, "1.1.0")
    with pytest.raises(UntrustedMetadataError, match="BadVersionNumberError"):
        installed.update("digits")  # fast-forwarded: legitimate timestamps now look old
    assert_serving(installed, "1.0.0")
    # Recovery (TUF spec): rotate the timestamp key; the client drops its fast-forwarded timestamp.
    new_key = tmp_path / "keys" / "timestamp-new.pem"
    generate_key(new_key)
    Publisher(repo.root, repo.keys).rotate_keys("timestamp", remove=["timestamp-0.pem"], add=[new_key])
    assert installed.update("digits").updated
    assert_serving(installed, "1.1.0")


def test_endless_data_oversized_target_is_cut_off(repo, server, installed):
    publish(repo, "1.1.0")
    server.faults.extra_bytes, server.faults.extra_match = 10 << 20, "models/"
    with pytest.raises(ArtifactVerificationError, match="more than"):
        installed.update("digits")
    assert_serving(installed, "1.0.0")


def test_endless_data_oversized_metadata_is_cut_off(repo, server, installed):
    publish(repo, "1.1.0")
    server.faults.extra_bytes, server.faults.extra_match = 1 << 20, "timestamp.json"
    with pytest.raises(SyncError):
        installed.update("digits")
    assert_serving(installed, "1.0.0")


def test_slow_retrieval_trickling_server_is_abandoned(repo, server, tmp_path):
    fetcher = HttpxFetcher(read_timeout=2.0, min_bytes_per_s=1 << 20, min_deadline_s=1.0)
    client = client_for(repo, server, tmp_path, fetcher=fetcher)
    server.faults.trickle_s, server.faults.trickle_match = 0.01, "models/"
    with pytest.raises(SlowRetrievalError):
        client.update("digits")
    assert client.store.current("digits") is None  # nothing half-installed
    archive = next((repo.root / "targets" / "models").rglob("*.tar"))
    trickled = sum(v for k, v in server.faults.sent.items() if k.startswith("targets/models/"))
    assert trickled < archive.stat().st_size // 2  # abandoned early, not after the whole trickle


def test_key_compromise_below_threshold_is_refused(repo, server, installed):
    # One of the two targets keys (threshold 2) signs a release: not enough.
    publish(repo, "1.1.0", signers={"targets": ["targets-0.pem"]})
    with pytest.raises(UntrustedMetadataError) as info:
        installed.update("digits")
    assert info.value.kind == "UnsignedMetadataError"
    assert_serving(installed, "1.0.0")


def test_root_key_rotation_is_followed(repo, server, installed, tmp_path):
    new_key = tmp_path / "keys" / "root-new.pem"
    generate_key(new_key)
    Publisher(repo.root, repo.keys).rotate_keys("root", remove=["root-0.pem"], add=[new_key])
    publish(repo, "1.1.0")
    assert installed.update("digits").updated
    assert_serving(installed, "1.1.0")


# --- transport ---------------------------------------------------------------------------------

def test_unreachable_repository_and_wrong_trusted_root(repo, server, installed, tmp_path):
    offline = SyncClient("http://127.0.0.1:9", installed.store, DeviceProfile("device-1"))
    with pytest.raises(RepositoryUnreachableError):
        offline.check("digits")
    assert_serving(installed, "1.0.0")
    other_keys = tmp_path / "other-keys"
    from edgewise.sync._keys import generate_keys

    generate_keys(other_keys)
    other = Publisher.init(tmp_path / "other-repo", other_keys)
    stranger = SyncClient(server.url, tmp_path / "stranger", DeviceProfile("x"), trusted_root=other.trusted_root)
    with pytest.raises(UntrustedMetadataError):
        stranger.check("digits")


def test_interrupted_download_resumes_without_refetching(repo, server, installed):
    publish(repo, "1.2.0")  # 3 MiB of padding: a "large" target
    archive = next((repo.root / "targets" / "models" / "digits" / "1.2.0").glob("*.tar"))
    size = archive.stat().st_size
    server.faults.cut_after, server.faults.cut_match = size // 3, "models/"
    with pytest.raises(RepositoryUnreachableError):
        installed.update("digits")
    assert_serving(installed, "1.0.0")
    (part,) = (installed.store.root / "downloads").glob("*.part")
    have = part.stat().st_size
    assert 0 < have <= size // 3
    server.faults.cut_after = None
    server.faults.sent.clear()
    server.faults.requests.clear()
    result = installed.update("digits")
    assert result.updated and result.installed.version == "1.2.0"
    assert (next(iter(p for p in server.faults.sent if p.startswith("targets/models/"))), f"bytes={have}-") in \
        server.faults.requests
    sent = sum(v for k, v in server.faults.sent.items() if k.startswith("targets/models/"))
    assert sent == size - have == result.downloaded_bytes  # only the missing bytes crossed the network
    assert not part.exists()


def test_disk_full_during_download_is_a_clear_error(repo, server, installed):
    """A write that fails (here: a 1 MiB file-size limit on the process, EFBIG) while the 3 MiB update
    downloads: a SyncError naming local storage, and the installed model still serves."""
    import subprocess
    import sys

    publish(repo, "1.2.0")
    code = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
from edgewise.errors import SyncError
from edgewise.sync import DeviceProfile, SyncClient
client = SyncClient({server.url!r}, {str(installed.store.root)!r}, DeviceProfile("device-1"))
try:
    client.update("digits")
except SyncError as exc:
    print(str(exc).splitlines()[0])
    sys.exit(3)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert "cannot write the update to local storage" in result.stdout
    assert_serving(installed, "1.0.0")
    assert installed.update("digits").updated  # with space again, the update completes
    assert_serving(installed, "1.2.0")
