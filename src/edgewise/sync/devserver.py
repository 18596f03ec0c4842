"""A small static HTTP server with Range support, for local repositories, demos and tests.

A TUF repository is plain files, so production serves it from any static server or object store.
This one serves a directory on 127.0.0.1 (``edgewise demo`` and the tests start it in-process) and
can inject faults, so tests exercise the client against a real server rather than a mocked
transport: trickle (slow retrieval), extra bytes after a file (endless data), a connection cut after
N bytes (interrupted download), a server that ignores Range or answers with a chunked body, and a
count of body bytes sent per path (resume must not re-fetch).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Faults:
    trickle_s: float = 0.0  # delay between 1-byte writes (0 = off)
    trickle_match: str = ""  # only paths containing this
    extra_bytes: int = 0  # appended after the real file
    extra_match: str = ""
    cut_after: int | None = None  # close the connection after this many body bytes
    cut_match: str = ""
    ignore_range: bool = False  # answer 200 with the whole file even when asked for a range
    chunked: bool = False  # Transfer-Encoding: chunked instead of Content-Length
    sent: dict[str, int] = field(default_factory=dict)  # path -> body bytes sent
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Range header)


class RepoServer:
    """``with RepoServer(repo_dir) as server: ... server.url ...`` (a free port on 127.0.0.1)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.faults = Faults()
        handler = _make_handler(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> RepoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _make_handler(server: RepoServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet test output
            pass

        def setup(self) -> None:
            super().setup()
            # Headers and body leave in separate writes; without NODELAY, Nagle's algorithm and the
            # client's delayed ACK add ~40 ms to every small response (measured on loopback).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self) -> None:
            faults = server.faults
            rel = unquote(urlparse(self.path).path).lstrip("/")
            path = (server.root / rel).resolve()
            faults.requests.append((rel, self.headers.get("Range", "")))
            if server.root.resolve() not in path.parents or not path.is_file():
                self.send_error(404)
                return
            size = path.stat().st_size
            extra = faults.extra_bytes if faults.extra_bytes and faults.extra_match in rel else 0
            total = size + extra
            start, end, status = 0, total - 1, 200
            match = None if faults.ignore_range else _RANGE.match(self.headers.get("Range", ""))
            if match:
                start = int(match.group(1))
                end = min(int(match.group(2)), total - 1) if match.group(2) else total - 1
                if start >= total:
                    self.send_error(416)
                    return
                status = 206
            self.send_response(status)
            if faults.chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
            self.end_headers()
            limit = faults.cut_after if faults.cut_after is not None and faults.cut_match in rel else None
            trickle = faults.trickle_s if faults.trickle_s and faults.trickle_match in rel else 0.0
            sent = 0
            if faults.chunked:
                sent = _send_chunked(self.wfile, _body(path, size, start, end, step=1 << 16))
                faults.sent[rel] = faults.sent.get(rel, 0) + sent
                return
            if limit is None and not trickle and not extra:
                sent = _sendfile(self.connection, path, start, end - start + 1)
                faults.sent[rel] = faults.sent.get(rel, 0) + sent
                return
            try:
                for chunk in _body(path, size, start, end, step=1 if trickle else 1 << 20):
                    if limit is not None and sent + len(chunk) > limit:
                        self.wfile.write(chunk[: max(0, limit - sent)])
                        sent = limit
                        self.close_connection = True
                        break
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    if trickle:
                        self.wfile.flush()
                        time.sleep(trickle)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                faults.sent[rel] = faults.sent.get(rel, 0) + sent

    return Handler


def _body(path: Path, size: int, start: int, end: int, *, step: int) -> Iterator[bytes]:
    """Bytes ``start..end`` of the file followed by zero padding past its end (the endless-data fault)."""
    with open(path, "rb") as handle:
        handle.seek(min(start, size))
        position = start
        while position <= end:
            want = min(step, end - position + 1)
            chunk = handle.read(want) if position < size else b""
            chunk += b"\0" * (want - len(chunk))
            yield chunk
            position += want


def _send_chunked(out, chunks: Iterator[bytes]) -> int:
    sent = 0
    for chunk in chunks:
        out.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        sent += len(chunk)
    out.write(b"0\r\n\r\n")
    return sent


def _sendfile(sock: socket.socket, path: Path, start: int, count: int) -> int:
    """The plain case through the kernel (os.sendfile): no copies through Python for large targets."""
    sent = 0
    try:
        with open(path, "rb") as handle:
            while sent < count:
                n = os.sendfile(sock.fileno(), handle.fileno(), start + sent, count - sent)
                if n == 0:
                    break
                sent += n
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def main() -> None:
    """``python -m edgewise.sync.devserver DIR``: serve DIR, print the URL, run until killed."""
    import sys

    with RepoServer(Path(sys.argv[1])) as server:
        print(server.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
