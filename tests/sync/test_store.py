"""ModelStore on real bundles: install, switch, rollback, post-install check, recovery from corruption."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgewise import device_runtime
from edgewise.demo.bundles import SAMPLE_X, make_bundle
from edgewise.errors import SyncError
from edgewise.sync._archive import pack_bundle
from edgewise.sync.store import (
    CorruptStoreError,
    ModelStore,
    NoUsableModelError,
    PostInstallCheckError,
)

torch = pytest.importorskip("torch")

MODEL = "mlp"


@dataclass(frozen=True)
class Release:
    """One built version: its bundle directory, its archive and the output its sample expects."""

    version: str
    bundle: Path
    archive: Path
    expected: np.ndarray


def build_release(
    folder: Path, version: str, *, seed: int, name: str = MODEL, wrong_sample: bool = False, padding: int = 0,
) -> Release:
    """A small MLP bundle (its sample deliberately wrong if asked) and its packed archive."""
    bundle = make_bundle(folder, name, version, seed=seed, padding_bytes=padding, wrong_sample=wrong_sample)
    expected = device_runtime.load(bundle / "model.onnx").run({"x": SAMPLE_X})["y"]
    archive = pack_bundle(bundle, folder / f"{name}-{version}.tar")
    return Release(version, bundle, archive, expected)


def assert_serves(model: device_runtime.Model, release: Release) -> None:
    np.testing.assert_allclose(model.run({"x": SAMPLE_X})["y"], release.expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, Release]:
    folder = tmp_path_factory.mktemp("store-releases")
    return {
        "1": build_release(folder, "1", seed=1),
        "2": build_release(folder, "2", seed=2),
        "3": build_release(folder, "3", seed=3, wrong_sample=True),
        "other": build_release(folder, "1", seed=4, name="other"),
    }


@pytest.fixture
def store(tmp_path, releases) -> ModelStore:
    """A store with v1 then v2 installed."""
    store = ModelStore(tmp_path / "store")
    store.install_archive(releases["1"].archive)
    store.install_archive(releases["2"].archive)
    return store


def test_install_switches_and_keeps_previous(tmp_path, releases):
    store = ModelStore(tmp_path / "store")
    assert store.current(MODEL) is None
    first = store.install_archive(releases["1"].archive, expected_model=MODEL, expected_version="1")
    assert (first.version, first.previous) == ("1", None)
    second = store.install_archive(releases["2"].archive)
    assert (second.version, second.previous) == ("2", "1")
    assert store.current(MODEL) == second
    assert store.last_event is not None and store.last_event.kind == "installed"
    assert store.models() == [MODEL] and store.versions(MODEL) == ["1", "2"]
    assert json.loads((tmp_path / "store" / "current" / f"{MODEL}.json").read_text()) == {
        "version": "2", "previous": "1",
    }
    assert_serves(store.load(MODEL), releases["2"])


def test_reinstalling_the_current_version_changes_nothing(store, releases):
    again = store.install_archive(releases["2"].archive)
    assert (again.version, again.previous) == ("2", "1")


def test_install_dir_copies_only_listed_files(tmp_path, releases):
    (releases["1"].bundle / "stray.txt").write_text("not in the manifest")
    try:
        store = ModelStore(tmp_path / "store")
        installed = store.install_dir(releases["1"].bundle)
    finally:
        (releases["1"].bundle / "stray.txt").unlink()
    assert not (installed.path / "stray.txt").exists()
    assert_serves(store.load(MODEL), releases["1"])


def test_rollback_and_roll_forward(store, releases):
    back = store.rollback(MODEL)
    assert (back.version, back.previous) == ("1", "2")
    assert_serves(store.load(MODEL), releases["1"])
    assert store.rollback(MODEL).version == "2"


def test_rollback_without_previous_is_refused(tmp_path, releases):
    store = ModelStore(tmp_path / "store")
    with pytest.raises(SyncError, match="no version"):
        store.rollback(MODEL)
    store.install_archive(releases["1"].archive)
    with pytest.raises(SyncError, match="no good previous"):
        store.rollback(MODEL)


def test_failed_post_install_check_marks_bad_and_keeps_current(store, releases):
    with pytest.raises(PostInstallCheckError, match=r"mlp 3 failed its post-install check.*differs") as info:
        store.install_archive(releases["3"].archive)
    assert (info.value.model, info.value.version) == (MODEL, "3")
    assert store.is_bad(MODEL, "3") and not store.is_bad(MODEL, "2")
    assert store.current(MODEL).version == "2"
    assert_serves(store.load(MODEL), releases["2"])
    assert store.last_event is None


def test_install_without_check_trusts_the_bundle(store, releases):
    assert store.install_archive(releases["3"].archive, check=False).version == "3"
    model = store.load(MODEL)  # the check runs at load: 3 is marked bad, 2 serves again
    assert_serves(model, releases["2"])
    assert store.is_bad(MODEL, "3")
    assert store.last_event is not None and store.last_event.kind == "auto_rollback"


def test_corrupted_current_file_rolls_back_at_load(store, releases):
    model_file = store.current(MODEL).path / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[:-16] + b"\0" * 16)
    model = store.load(MODEL)
    assert_serves(model, releases["1"])
    event = store.last_event
    assert event is not None and (event.kind, event.version, event.replaced) == ("auto_rollback", "1", "2")
    assert "model.onnx" in event.reason
    assert store.is_bad(MODEL, "2")
    assert (store.current(MODEL).version, store.current(MODEL).previous) == ("1", None)
    # Installing the release again replaces the damaged copy and clears the mark.
    assert store.install_archive(releases["2"].archive).version == "2"
    assert not store.is_bad(MODEL, "2")
    assert_serves(store.load(MODEL), releases["2"])


def test_nothing_loadable_is_a_clear_error(tmp_path, releases):
    store = ModelStore(tmp_path / "store")
    with pytest.raises(NoUsableModelError, match="nothing is installed"):
        store.load(MODEL)
    store.install_archive(releases["1"].archive)
    (store.current(MODEL).path / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(NoUsableModelError, match="1: load failed"):
        store.load(MODEL)


def test_corrupt_pointer_is_reported_then_recovered(store, releases):
    """Documented behaviour: current/rollback/prune raise CorruptStoreError; load recovers; install repairs."""
    pointer = store.root / "current" / f"{MODEL}.json"
    pointer.write_bytes(b'{"version": "2", "prev')
    with pytest.raises(CorruptStoreError, match="unreadable"):
        store.current(MODEL)
    with pytest.raises(CorruptStoreError):
        store.prune(MODEL)
    model = store.load(MODEL)  # newest good version
    assert_serves(model, releases["2"])
    assert store.last_event is not None and store.last_event.kind == "recovered"
    assert store.current(MODEL).version == "2"
    pointer.write_bytes(b"\0\0\0")
    assert store.install_archive(releases["1"].archive).version == "1"
    assert store.current(MODEL).previous is None


def test_pointer_naming_a_path_outside_the_store_is_corrupt(store):
    (store.root / "current" / f"{MODEL}.json").write_text(json.dumps({"version": "../../etc", "previous": None}))
    with pytest.raises(CorruptStoreError):
        store.current(MODEL)


def test_name_or_version_mismatch_is_refused(store, releases):
    with pytest.raises(SyncError, match="holds model 'other'"):
        store.install_archive(releases["other"].archive, expected_model=MODEL)
    with pytest.raises(SyncError, match="holds version '1'"):
        store.install_archive(releases["1"].archive, expected_version="2")
    assert store.models() == [MODEL]
    assert not any((store.root / "staging").iterdir())


def test_tampered_archive_is_refused(tmp_path, store, releases):
    tampered = tmp_path / "tampered.tar"
    with tarfile.open(releases["1"].archive) as src, tarfile.open(tampered, "w") as dst:
        for member in src:
            data = src.extractfile(member).read()
            if member.name == "model.onnx":
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(SyncError, match="not a valid bundle.*model.onnx"):
        store.install_archive(tampered)
    assert store.current(MODEL).version == "2"


def test_prune_keeps_current_and_previous(tmp_path, releases):
    store = ModelStore(tmp_path / "store")
    for key in ("1", "2"):
        store.install_archive(releases[key].archive)
    with pytest.raises(PostInstallCheckError):
        store.install_archive(releases["3"].archive)
    assert store.prune(MODEL) == ["3"]
    assert store.versions(MODEL) == ["1", "2"]
    store.rollback(MODEL)
    assert store.prune(MODEL, keep=0) == []  # current and previous are never pruned


def test_invalid_model_name_is_refused(tmp_path):
    store = ModelStore(tmp_path / "store")
    with pytest.raises(SyncError, match="not a plain name"):
        store.current("../evil")


def test_marking_bad_does_not_reorder_versions(store, releases):
    with pytest.raises(PostInstallCheckError):
        store.install_archive(releases["3"].archive)
    assert store.versions(MODEL) == ["1", "2", "3"]
    store._mark_bad(MODEL, "1", "test")  # a late bad mark on the oldest version
    assert store.versions(MODEL) == ["1", "2", "3"]
