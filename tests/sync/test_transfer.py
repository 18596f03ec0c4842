"""Target downloads on each transfer path, against the real fault-injecting server.

The three paths: the direct path with ``os.splice`` (the default on Linux), the direct path through
one user-space buffer (other systems, or a file system that refuses splice), and httpx (HTTPS,
proxies, custom transports). Each must resume, refuse endless data, abandon a trickle and keep the
bytes of an interrupted download; the hash is computed while the file lands.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
from pathlib import Path

import pytest
from tuf.api import exceptions as tuf_exc

from edgewise.sync import _rawhttp
from edgewise.sync._fetcher import HttpxFetcher
from edgewise.sync._hashing import STRETCH, Digests, LandingHasher
from edgewise.sync.devserver import RepoServer

SIZE = 3 * STRETCH + 12345  # several hashing stretches and a partial one

PATHS = {
    "splice": {},
    "copy": {"splice": False},
    "httpx": {"direct_transfer": False},
}


@pytest.fixture
def target(tmp_path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "repo"
    root.mkdir()
    data = os.urandom(SIZE)
    (root / "target.bin").write_bytes(data)
    return root, {"sha256": hashlib.sha256(data).hexdigest()}


@pytest.fixture
def server(target):
    with RepoServer(target[0]) as srv:
        yield srv


@pytest.fixture(params=sorted(PATHS))
def fetcher(request):
    fetcher = HttpxFetcher(read_timeout=2.0, **PATHS[request.param])
    yield fetcher
    fetcher.close()


def _sent(server) -> int:
    return server.faults.sent.get("target.bin", 0)


def test_whole_download_is_verified_and_reports_progress(fetcher, server, target, tmp_path):
    seen = []
    dest = tmp_path / "t.part"
    received = fetcher.download_resumable(f"{server.url}/target.bin", dest, length=SIZE, hashes=target[1],
                                          progress=lambda have, total: seen.append((have, total)))
    assert received == SIZE == dest.stat().st_size == fetcher.bytes_received
    assert dest.read_bytes() == (target[0] / "target.bin").read_bytes()
    assert seen[-1] == (SIZE, SIZE) and all(a[0] < b[0] for a, b in itertools.pairwise(seen))


def test_interrupted_download_keeps_its_bytes_and_resumes_from_them(fetcher, server, target, tmp_path):
    dest = tmp_path / "t.part"
    server.faults.cut_after = SIZE // 2 + 1
    with pytest.raises(tuf_exc.DownloadError):
        fetcher.download_resumable(f"{server.url}/target.bin", dest, length=SIZE, hashes=target[1])
    have = dest.stat().st_size
    assert have == SIZE // 2 + 1
    server.faults.cut_after = None
    server.faults.sent.clear()
    received = fetcher.download_resumable(f"{server.url}/target.bin", dest, length=SIZE, hashes=target[1])
    assert received == SIZE - have == _sent(server)  # only the missing bytes crossed the network
    assert server.faults.requests[-1] == ("target.bin", f"bytes={have}-")
    assert dest.read_bytes() == (target[0] / "target.bin").read_bytes()


def test_server_that_ignores_range_gets_the_whole_file_rewritten(fetcher, server, target, tmp_path):
    dest = tmp_path / "t.part"
    dest.write_bytes(b"\xff" * 1000)  # stale bytes that a resume would keep
    server.faults.ignore_range = True
    received = fetcher.download_resumable(f"{server.url}/target.bin", dest, length=SIZE, hashes=target[1])
    assert received == SIZE
    assert dest.read_bytes() == (target[0] / "target.bin").read_bytes()


def test_endless_data_is_refused_before_it_lands(fetcher, server, target, tmp_path):
    dest = tmp_path / "t.part"
    server.faults.extra_bytes = 10 << 20
    with pytest.raises(tuf_exc.DownloadLengthMismatchError, match="more than"):
        fetcher.download_resumable(f"{server.url}/target.bin", dest, length=SIZE, hashes=target[1])
    assert not dest.exists() or dest.stat().st_size <= SIZE


def test_trickling_server_is_abandoned_at_the_deadline(server, target, tmp_path):
    for options in PATHS.values():
        fetcher = HttpxFetcher(read_timeout=2.0, min_bytes_per_s=100 << 20, min_deadline_s=0.5, **options)
        server.faults.trickle_s = 0.002
        server.faults.sent.clear()
        with pytest.raises(tuf_exc.SlowRetrievalError):
            fetcher.download_resumable(f"{server.url}/target.bin", tmp_path / "t.part", length=SIZE,
                                       hashes=target[1])
        assert _sent(server) < SIZE // 100, options  # abandoned, not fed to the end


def test_silent_server_is_a_slow_retrieval_after_the_read_timeout(server, target, tmp_path):
    """A server that sends the head, then nothing: ``read_timeout`` ends the wait on every path."""
    for options in PATHS.values():
        fetcher = HttpxFetcher(read_timeout=0.5, min_deadline_s=60.0, **options)
        server.faults.trickle_s = 5.0  # one byte, then five seconds of silence
        with pytest.raises(tuf_exc.SlowRetrievalError):
            fetcher.download_resumable(f"{server.url}/target.bin", tmp_path / "t.part", length=SIZE,
                                       hashes=target[1])


def test_tampered_body_is_deleted_and_refused(fetcher, server, target, tmp_path):
    dest = tmp_path / "t.part"
    wrong = {"sha256": hashlib.sha256(b"something else").hexdigest()}
    with pytest.raises(tuf_exc.LengthOrHashMismatchError, match="differ"):
        fetcher.download_resumable(f"{server.url}/target.bin", dest, length=SIZE, hashes=wrong)
    assert not dest.exists()


def test_chunked_response_falls_back_to_httpx(server, target, tmp_path):
    server.faults.chunked = True
    fetcher = HttpxFetcher()
    dest = tmp_path / "t.part"
    assert fetcher.download_resumable(f"{server.url}/target.bin", dest, length=SIZE, hashes=target[1]) == SIZE
    assert dest.read_bytes() == (target[0] / "target.bin").read_bytes()
    with pytest.raises(_rawhttp.NotPlainBody):  # what made the fetcher switch
        _rawhttp.open_get(f"{server.url}/target.bin", {}, connect_timeout=2, read_timeout=2)


def test_file_system_that_refuses_splice_gets_the_bytes_by_hand(server, target, tmp_path, monkeypatch):
    """Some file systems answer EINVAL to a splice into a file; the bytes in flight must not be lost."""
    if not hasattr(os, "splice"):
        pytest.skip("os.splice is Linux-only")
    real_splice, dest = os.splice, tmp_path / "t.part"
    refused = []

    def splice(src: int, dst: int, count: int, *args, **kwargs) -> int:
        if os.path.isfile(f"/proc/self/fd/{dst}"):
            refused.append(count)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_splice(src, dst, count, *args, **kwargs)

    monkeypatch.setattr(os, "splice", splice)
    fetcher = HttpxFetcher()
    assert fetcher.download_resumable(f"{server.url}/target.bin", dest, length=SIZE, hashes=target[1]) == SIZE
    assert len(refused) == 1  # tried once, then the user-space copy for the rest
    assert dest.read_bytes() == (target[0] / "target.bin").read_bytes()


def test_unreachable_server_is_a_download_error(target, tmp_path):
    with pytest.raises(tuf_exc.DownloadError, match="cannot connect"):
        HttpxFetcher(connect_timeout=1.0).download_resumable("http://127.0.0.1:9/target.bin", tmp_path / "t.part",
                                                             length=SIZE, hashes=target[1])


# --- the hashing thread ------------------------------------------------------------------------

def test_landing_hasher_hashes_what_landed_across_stretches(tmp_path):
    data = os.urandom(2 * STRETCH + 777)
    path = tmp_path / "f"
    path.write_bytes(data[:100])
    hasher = LandingHasher(path, Digests({"sha256": hashlib.sha256(data).hexdigest(),
                                          "sha512": hashlib.sha512(data).hexdigest()}), landed=100)
    with open(path, "ab") as out:
        for offset in range(100, len(data), 300_001):
            out.write(data[offset:offset + 300_001])
            out.flush()
            hasher.landed(min(len(data), offset + 300_001))
    assert hasher.finish().match()


def test_landing_hasher_abort_and_wrong_hash(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(STRETCH + 1))
    hasher = LandingHasher(path, Digests({"sha256": "0" * 64}), landed=STRETCH + 1)
    assert not hasher.finish().match()
    LandingHasher(path, Digests({"sha256": "0" * 64}), landed=STRETCH + 1).abort()  # returns, no thread left
    with pytest.raises(tuf_exc.LengthOrHashMismatchError, match="unsupported hash"):
        Digests({"md17": "00"})
