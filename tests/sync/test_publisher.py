"""The publisher's repository, checked by a real ``tuf.ngclient.Updater`` reading it straight from disk.

Each attack is a few lines: forge the repository state with the publisher's own knobs (explicit
signers, a negative expiry) and assert the client refuses it with the named TUF error.
"""

from __future__ import annotations

import datetime
import io
import json
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tuf.api.exceptions import DownloadHTTPError, ExpiredMetadataError, UnsignedMetadataError
from tuf.ngclient import FetcherInterface, Updater

from edgewise.bundle import BundleBuilder, Manifest, Quantization, Requirements, Signature, Source, TensorSpec
from edgewise.errors import SyncError
from edgewise.sync._keys import generate_key, generate_keys, load_public_key, load_signer
from edgewise.sync._release import Release, archive_target_path, release_target_path
from edgewise.sync.publisher import Publisher

BASE = "file://repo/"


class DiskFetcher(FetcherInterface):
    """Serves ``BASE...`` URLs from a directory; a missing file is a 404, as the root walk expects."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = self.root / url.removeprefix(BASE)
        if not path.is_file():
            raise DownloadHTTPError(f"{url} not found", 404)
        return iter([path.read_bytes()])


def _bundle(tmp_path: Path, version: str, payload: bytes = b"weights") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    model = tmp_path / f"src-{version}.onnx"
    model.write_bytes(b"\x08\x07" + payload)
    builder = BundleBuilder()
    builder.add_file(model, "model.onnx")
    builder.add_sample({"x": np.ones((1, 2), np.float32)}, {"y": np.ones((1, 1), np.float32)})
    manifest = Manifest(
        name="toy", version=version, format="onnx", task="regression", entrypoint="model.onnx", files=(),
        signature=Signature(inputs=(TensorSpec("x", "float32", ("batch", 2)),),
                            outputs=(TensorSpec("y", "float32", ("batch", 1)),)),
        quantization=Quantization(), source=Source(kind="onnx", digest="sha256:" + "0" * 64), edgewise_version="",
        requirements=Requirements(min_runtime_version="0.1.0", backends=("onnxruntime",), min_ram_bytes=1 << 20),
    )
    return builder.write(tmp_path / f"toy-{version}", manifest).root


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    keys_dir = tmp_path / "keys"
    generate_keys(keys_dir)
    return keys_dir


@pytest.fixture
def repo(tmp_path: Path, keys: Path) -> Publisher:
    return Publisher.init(tmp_path / "repo", keys)


def _client(publisher: Publisher, tmp_path: Path, name: str = "device") -> Updater:
    """A device that shipped with trusted_root.json and has never talked to the repository."""
    metadata_dir = tmp_path / name / "metadata"
    metadata_dir.mkdir(parents=True, exist_ok=True)
    (tmp_path / name / "targets").mkdir(exist_ok=True)
    return Updater(str(metadata_dir), BASE + "metadata/", str(tmp_path / name / "targets"), BASE + "targets/",
                   fetcher=DiskFetcher(publisher.repo_dir), bootstrap=publisher.trusted_root.read_bytes())


def _record(updater: Updater, channel: str = "stable") -> Release:
    info = updater.get_targetinfo(release_target_path(channel, "toy"))
    assert info is not None
    return Release.from_json(Path(updater.download_target(info)).read_bytes())


def _metadata(publisher: Publisher, name: str) -> dict:
    return json.loads((publisher.repo_dir / "metadata" / name).read_text())["signed"]


# -- keys ---------------------------------------------------------------------------------------------------


def test_generate_keys_writes_private_0600_and_public_json(keys: Path):
    names = sorted(p.name for p in keys.iterdir())
    assert names.count("root-2.pem") == 1 and "targets-2.pub.json" in names and "timestamp-1.pem" not in names
    assert len([n for n in names if n.endswith(".pem")]) == 8
    assert stat.S_IMODE((keys / "root-0.pem").stat().st_mode) == 0o600
    public = load_public_key(keys / "root-0.pub.json")
    assert public == load_public_key(keys / "root-0.pem") == load_signer(keys / "root-0.pem").public_key
    assert public.keytype == "ed25519"
    with pytest.raises(SyncError, match="already holds key files"):
        generate_keys(keys)
    with pytest.raises(SyncError, match="already exists"):
        generate_key(keys / "targets-0.pem")


# -- publishing, as a device sees it -------------------------------------------------------------------------


def test_publish_is_verified_by_a_real_tuf_client(repo: Publisher, tmp_path: Path):
    release = repo.publish(_bundle(tmp_path, "1.0.0"), rollout=10)
    assert release.archive == archive_target_path("toy", "1.0.0") and release.rollout == 10.0
    assert (repo.repo_dir / "metadata" / "1.root.json").read_bytes() == repo.trusted_root.read_bytes()

    updater = _client(repo, tmp_path)
    updater.refresh()
    record_info = updater.get_targetinfo(release_target_path("stable", "toy"))
    assert record_info is not None and float(record_info.custom["rollout"]) == 10.0  # canonical JSON: no floats
    assert record_info.custom["requirements"] == {"backends": ["onnxruntime"], "min_ram_bytes": 1 << 20}
    assert _record(updater) == release

    archive_info = updater.get_targetinfo(release.archive)
    assert archive_info is not None and archive_info.length == release.archive_length
    assert archive_info.custom == {**release.custom(), "rollout": "10.0"}
    with tarfile.open(fileobj=io.BytesIO(Path(updater.download_target(archive_info)).read_bytes())) as tar:
        assert {"manifest.json", "model.onnx"} <= set(tar.getnames())
    sha = archive_info.hashes["sha256"]
    assert (repo.repo_dir / "targets" / "models" / "toy" / "1.0.0" / f"{sha}.toy-1.0.0.tar").is_file()


def test_v2_bumps_versions_and_older_versions_are_refused(repo: Publisher, tmp_path: Path):
    v1 = _bundle(tmp_path, "1.0.0")
    repo.publish(v1)
    assert _metadata(repo, "timestamp.json")["version"] == 2
    assert repo.publish(v1).version == "1.0.0"  # same bytes again: no-op
    assert _metadata(repo, "timestamp.json")["version"] == 2

    updater = _client(repo, tmp_path)
    updater.refresh()
    repo.publish(_bundle(tmp_path, "1.10.0", b"v2"))
    assert _metadata(repo, "timestamp.json")["version"] == 3
    assert _metadata(repo, "3.snapshot.json")["meta"]["targets.json"]["version"] == 3
    assert (repo.repo_dir / "metadata" / "2.targets.json").is_file()  # consistent snapshots keep old versions

    with pytest.raises(SyncError, match=r"toy 1\.9\.0 is not newer than 1\.10\.0"):
        repo.publish(_bundle(tmp_path, "1.9.0", b"old"))
    with pytest.raises(SyncError, match="already published with different bytes"):
        repo.publish(_bundle(tmp_path / "other", "1.0.0", b"changed"), channel="beta")

    fresh = _client(repo, tmp_path, "device2")
    fresh.refresh()
    assert _record(fresh).version == "1.10.0"
    updater = _client(repo, tmp_path)  # the first device again, from its cached metadata
    updater.refresh()
    assert _record(updater).version == "1.10.0"


def test_set_rollout_rewrites_the_record(repo: Publisher, tmp_path: Path):
    repo.publish(_bundle(tmp_path, "1.0.0"), rollout=5)
    grown = repo.set_rollout("toy", "stable", 50)
    assert grown.rollout == 50.0 and grown.version == "1.0.0"
    updater = _client(repo, tmp_path)
    updater.refresh()
    assert _record(updater).rollout == 50.0
    assert updater.get_targetinfo(grown.archive).custom["rollout"] == "50.0"
    with pytest.raises(SyncError, match="no release"):
        repo.set_rollout("toy", "beta", 10)
    with pytest.raises(SyncError, match="outside 0..100"):
        repo.set_rollout("toy", "stable", 150)


def test_reopened_publisher_continues_the_repository(repo: Publisher, keys: Path, tmp_path: Path):
    repo.publish(_bundle(tmp_path, "1.0.0"))
    Publisher(repo.repo_dir, keys).publish(_bundle(tmp_path, "2.0.0", b"v2"), channel="beta")
    updater = _client(repo, tmp_path)
    updater.refresh()
    assert _record(updater, "beta").version == "2.0.0" and _record(updater).version == "1.0.0"


# -- keys: rotation, compromise -----------------------------------------------------------------------------


def test_root_rotation_is_followed_from_the_shipped_root(repo: Publisher, keys: Path, tmp_path: Path):
    repo.publish(_bundle(tmp_path, "1.0.0"))
    new_key = tmp_path / "offline" / "root-new.pem"
    generate_key(new_key)
    repo.rotate_keys("root", remove=["root-0.pem"], add=[new_key], threshold=2)
    assert (keys / "root-new.pem").is_file()  # adopted so that later publishers can sign with it
    repo.rotate_keys("targets", remove=["targets-2.pem"])
    assert [p.name for p in sorted((repo.repo_dir / "metadata").glob("*.root.json"))] == [
        "1.root.json", "2.root.json", "3.root.json"]

    updater = _client(repo, tmp_path)
    updater.refresh()
    assert updater._trusted_set.root.version == 3
    root_keys = updater._trusted_set.root.roles["root"].keyids
    assert load_public_key(new_key).keyid in root_keys
    assert load_public_key(keys / "root-0.pem").keyid not in root_keys
    assert _record(updater).version == "1.0.0"


def test_root_rotation_without_enough_old_keys_is_refused_before_writing(repo: Publisher, keys: Path):
    for name in ("root-0.pem", "root-1.pem"):
        (keys / name).rename(keys / f"{name}.offline")
    with pytest.raises(SyncError, match="root v2 lacks signatures"):
        repo.rotate_keys("root", threshold=1)
    assert not (repo.repo_dir / "metadata" / "2.root.json").exists()


def test_targets_signed_by_one_of_two_keys_is_rejected(repo: Publisher, keys: Path, tmp_path: Path):
    repo.publish(_bundle(tmp_path, "1.0.0"))
    repo.rotate_keys("targets", remove=["targets-2.pem"])  # two keys, threshold 2
    updater = _client(repo, tmp_path)
    updater.refresh()

    attacker = Publisher(repo.repo_dir, keys, signers={"targets": ["targets-0.pem"]})
    attacker.publish(_bundle(tmp_path, "6.6.6", b"evil"))
    updater = _client(repo, tmp_path)
    with pytest.raises(UnsignedMetadataError):
        updater.refresh()
    with pytest.raises(SyncError, match="signatures devices require"):  # the default signers refuse it
        (keys / "targets-1.pem").rename(keys / "targets-1.offline")
        Publisher(repo.repo_dir, keys).publish(_bundle(tmp_path, "7.0.0", b"x"))


def test_expired_timestamp_is_rejected(repo: Publisher, tmp_path: Path):
    repo.publish(_bundle(tmp_path, "1.0.0"))
    repo.refresh_timestamp(expires_in=-datetime.timedelta(seconds=1))
    with pytest.raises(ExpiredMetadataError):
        _client(repo, tmp_path).refresh()
    repo.refresh_timestamp()
    _client(repo, tmp_path, "device2").refresh()


def test_init_refuses_an_existing_repository_and_impossible_thresholds(repo: Publisher, keys: Path, tmp_path: Path):
    with pytest.raises(SyncError, match="already holds a TUF repository"):
        Publisher.init(repo.repo_dir, keys)
    with pytest.raises(SyncError, match="threshold 4 with 3 keys"):
        Publisher.init(tmp_path / "other", keys, thresholds={"root": 4})
    with pytest.raises(SyncError, match="not a TUF repository"):
        Publisher(tmp_path / "nothing", keys)
