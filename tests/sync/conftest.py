"""Real bundles, a real TUF repository and a real HTTP server for the sync tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from edgewise.demo.bundles import make_bundle

torch = pytest.importorskip("torch")


@dataclass
class Repo:
    root: Path
    keys: Path
    bundles: dict[str, Path]


@pytest.fixture
def repo(tmp_path) -> Repo:
    """A TUF repository with digits 1.0.0 published on stable, and bundles for 1.1.0 / 1.2.0 ready."""
    from edgewise.sync._keys import generate_keys
    from edgewise.sync.publisher import Publisher

    keys = tmp_path / "keys"
    generate_keys(keys)
    root = tmp_path / "repo"
    publisher = Publisher.init(root, keys)
    bundles = {v: make_bundle(tmp_path, "digits", v, seed=i, padding_bytes=3 << 20 if v == "1.2.0" else 0)
               for i, v in enumerate(["1.0.0", "1.1.0", "1.2.0"])}
    publisher.publish(bundles["1.0.0"], channel="stable")
    return Repo(root, keys, bundles)


@pytest.fixture
def server(repo):
    from edgewise.sync.devserver import RepoServer

    with RepoServer(repo.root) as srv:
        yield srv
