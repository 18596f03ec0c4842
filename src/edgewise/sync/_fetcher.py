"""HTTP for the update client, on httpx: timeouts, a whole-download deadline, size caps, resume.

python-tuf's ``Updater`` verifies what it receives but leaves transport policy to the fetcher.
Per-read timeouts alone do not stop a server that trickles one byte a second (TUF's slow
retrieval attack), so every download also has a deadline derived from a minimum average speed.
Large targets are fetched with HTTP Range into a ``.part`` file, so an interrupted download
continues where it stopped instead of starting over.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from tuf.api import exceptions as tuf_exc
from tuf.ngclient import FetcherInterface

Progress = Callable[[int, int], None]  # (bytes so far, total)


class HttpxFetcher(FetcherInterface):
    """A ``tuf.ngclient`` fetcher with connect/read timeouts and a minimum average speed.

    ``transport`` is httpx's pluggable transport (tests may pass one; production uses the default).
    """

    def __init__(self, *, connect_timeout: float = 5.0, read_timeout: float = 10.0,
                 min_bytes_per_s: float = 64 * 1024, min_deadline_s: float = 15.0,
                 transport: httpx.BaseTransport | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self._client = httpx.Client(
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout), transport=transport,
            headers={"User-Agent": "edgewise-sync", **(headers or {})}, follow_redirects=False,
        )
        self.min_bytes_per_s = min_bytes_per_s
        self.min_deadline_s = min_deadline_s
        self.bytes_received = 0  # all downloads through this fetcher (the resume test counts them)

    def close(self) -> None:
        self._client.close()

    def _fetch(self, url: str) -> Iterator[bytes]:
        """Metadata and small targets for ngclient; it caps the length itself."""
        try:
            with self._client.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise tuf_exc.DownloadHTTPError(f"{url}: HTTP {response.status_code}", response.status_code)
                yield from self._chunks(response, self._deadline(None))
        except httpx.ConnectTimeout:
            raise  # unreachable, not slow: ngclient wraps it as a DownloadError
        except httpx.TimeoutException as exc:
            raise tuf_exc.SlowRetrievalError(f"{url}: {type(exc).__name__}") from exc

    def download_resumable(self, url: str, dest: Path, *, length: int, hashes: dict[str, str],
                           progress: Progress | None = None) -> int:
        """Fetch ``url`` into ``dest`` (a ``.part`` file), continuing a previous partial download,
        and check the whole file against the TUF-signed ``length`` and ``hashes``.

        Returns the bytes received by this call. Never writes more than ``length`` bytes: a server
        that sends more is an endless-data attack and the download fails. Hashes are computed while
        the bytes stream in (the file is not read a second time; measured: download-and-verify then
        costs about what hashing alone costs). A mismatch deletes the file and raises
        ``LengthOrHashMismatchError``.
        """
        have = dest.stat().st_size if dest.exists() else 0
        if have > length:  # stale or hostile leftovers: start over
            dest.unlink()
            have = 0
        digests = _Digests(hashes)
        if have:
            digests.update_from_file(dest)
        received = 0
        if have < length:
            headers = {"Range": f"bytes={have}-"} if have else {}
            with self._client.stream("GET", url, headers=headers) as response:
                if response.status_code not in (200, 206):
                    raise tuf_exc.DownloadHTTPError(f"{url}: HTTP {response.status_code}", response.status_code)
                if response.status_code == 200 and have:  # the server ignored Range: the body is the whole file
                    have, digests = 0, _Digests(hashes)
                deadline = self._deadline(length - have)
                with open(dest, "ab" if have else "wb") as out:
                    for chunk in self._chunks(response, deadline):
                        if have + received + len(chunk) > length:
                            raise tuf_exc.DownloadLengthMismatchError(
                                f"{url}: server sent more than the {length} bytes the signed metadata allows")
                        out.write(chunk)
                        digests.update(chunk)
                        received += len(chunk)
                        if progress:
                            progress(have + received, length)
        total = have + received
        if total != length or not digests.match():
            dest.unlink(missing_ok=True)
            raise tuf_exc.LengthOrHashMismatchError(
                f"{url}: {total} bytes (signed: {length}); hashes {'match' if digests.match() else 'differ'}")
        return received

    def _chunks(self, response: httpx.Response, deadline: float) -> Iterator[bytes]:
        try:
            # Each network read as it arrives: iter_raw(chunk_size) would buffer a whole chunk first,
            # and a trickling server would then never meet the deadline check (measured: a 10 kB
            # target trickled for 105 s before this check could run).
            for chunk in response.iter_raw():
                self.bytes_received += len(chunk)
                if time.monotonic() > deadline:
                    raise tuf_exc.SlowRetrievalError(f"{response.request.url}: below the minimum download speed")
                yield chunk
        except httpx.TimeoutException as exc:
            raise tuf_exc.SlowRetrievalError(f"{response.request.url}: {type(exc).__name__}") from exc

    def _deadline(self, length: int | None) -> float:
        budget = self.min_deadline_s + (length or 0) / self.min_bytes_per_s
        return time.monotonic() + budget


class _Digests:
    """Running digests for every algorithm the signed metadata lists (TUF's own names = hashlib's)."""

    def __init__(self, expected: dict[str, str]) -> None:
        if not expected:
            raise tuf_exc.LengthOrHashMismatchError("the signed metadata lists no hash for this target")
        try:
            self._running = {name: hashlib.new(name) for name in expected}
        except ValueError as exc:
            raise tuf_exc.LengthOrHashMismatchError(f"unsupported hash algorithm in metadata: {exc}") from exc
        self._expected = expected

    def update(self, chunk: bytes) -> None:
        for digest in self._running.values():
            digest.update(chunk)

    def update_from_file(self, path: Path) -> None:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                self.update(chunk)

    def match(self) -> bool:
        return all(self._running[name].hexdigest() == value for name, value in self._expected.items())

