"""Prediction-log upload against a real HTTP server of the test's own, which dedupes by batch id and counts.

The server counts a record once per batch id it has never seen; a duplicate batch is acknowledged but
not counted again. Kill -9 of the uploading process at many points must leave: every record counted
exactly once by the server, and none left in the device's log after a final run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgewise.device_runtime import PredictionLog
from edgewise.errors import RepositoryUnreachableError
from edgewise.sync import LogUploader


class LogServer:
    """Collects batches on 127.0.0.1; ``fail`` answers the next N posts with 503, ``hold`` blocks the next response."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: dict[str, int] = {}
        self.seqs: list[int] = []
        self.records: list[dict] = []
        self.posts = 0
        self.duplicates = 0
        self.fail = 0
        self.status = 503
        self.delay_s = 0.0
        self.hold: threading.Event | None = None
        self.received = threading.Condition(self.lock)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.headers["Idempotency-Key"] == body["batch_id"]
                with server.lock:
                    server.posts += 1
                    if server.fail:
                        server.fail -= 1
                        self.send_response(server.status)
                        self.send_header("Retry-After", "0")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        server.received.notify_all()
                        return
                    if body["batch_id"] in server.batches:
                        server.duplicates += 1
                    else:
                        server.batches[body["batch_id"]] = len(body["records"])
                        server.seqs.extend(r["seq"] for r in body["records"] if "seq" in r)
                        server.records.extend(body["records"])
                    hold = server.hold
                    server.received.notify_all()
                if hold is not None:
                    hold.wait(30)
                time.sleep(server.delay_s)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/predictions"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def wait_posts(self, n: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
        """Until the server saw ``n`` posts (or ``proc``, the uploader, has exited: nothing left to send)."""
        deadline = time.monotonic() + timeout
        with self.received:
            while self.posts < n and not (proc is not None and proc.poll() is not None):
                assert time.monotonic() < deadline, f"server saw {self.posts} posts, not {n}"
                self.received.wait(0.05)

    def __enter__(self) -> LogServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def log_server():
    with LogServer() as srv:
        yield srv


def fill(path, n: int, start: int = 0) -> PredictionLog:
    log = PredictionLog(path, max_records=100_000)
    log.append([{"kind": "prediction", "model": "m", "version": "1", "seq": i} for i in range(start, start + n)])
    return log


def test_upload_in_batches_with_retries(tmp_path, log_server):
    log = fill(tmp_path / "obs", 230)
    log_server.fail = 2  # two 503s with Retry-After: 0, then success
    uploader = LogUploader(log, log_server.url, device_id="dev-1", batch_size=100, backoff_s=0.01)
    report = uploader.upload()
    assert report.batches == 3 and report.records == 230 and report.left == 0 and report.attempts == 5
    assert sorted(log_server.seqs) == list(range(230)) and log_server.duplicates == 0
    assert log.stats()["uploaded"] == 230 and log.stats()["batches_uploaded"] == 3


def test_undeliverable_batch_stays_in_the_log(tmp_path, log_server):
    log = fill(tmp_path / "obs", 10)
    log_server.fail, log_server.status = 100, 400
    with pytest.raises(RepositoryUnreachableError, match="HTTP 400") as info:
        LogUploader(log, log_server.url, batch_size=5, backoff_s=0.01).upload()
    assert "same batch id" in info.value.hint
    assert log_server.posts == 1  # 400 is not retried
    sealed = log.pending_batch()
    assert sealed is not None and len(sealed.records) == 5 and log.stats()["records"] == 10


def test_unreachable_server_retries_then_raises(tmp_path):
    log = fill(tmp_path / "obs", 3)
    with pytest.raises(RepositoryUnreachableError):
        LogUploader(log, "http://127.0.0.1:9/none", retries=2, backoff_s=0.01).upload()
    assert log.stats()["records"] == 3


_UPLOADER = """
import sys
from edgewise.sync import LogUploader
LogUploader(sys.argv[1], sys.argv[2], batch_size=int(sys.argv[3]), backoff_s=0.01).upload()
"""


@pytest.mark.slow
def test_kill_9_mid_upload_loses_and_duplicates_nothing(tmp_path, log_server):
    total, batch = 2000, 40
    fill(tmp_path / "obs", total).close()
    log_server.delay_s = 0.01  # a window between "server counted it" and "client got the answer"
    rng = random.Random(8)
    held_resends = 0
    for trial in range(12):
        proc = subprocess.Popen([sys.executable, "-c", _UPLOADER, str(tmp_path / "obs"), log_server.url, str(batch)],
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        posts = log_server.posts
        if trial % 3 == 0:
            # Deterministic point: the server has counted the batch, the client waits for the answer.
            log_server.hold = threading.Event()
            log_server.wait_posts(posts + 1, proc=proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            if log_server.posts > posts:
                pending = PredictionLog(tmp_path / "obs").pending_batch()
                assert pending is not None and pending.batch_id in log_server.batches  # sealed before it was sent
                held_resends += 1
            log_server.hold.set()
            log_server.hold = None
        else:
            # Varied points: during the next posts, the ack, the sealing of the following batch.
            log_server.wait_posts(posts + rng.randint(1, 3), proc=proc)
            time.sleep(rng.uniform(0, 0.03))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        assert proc.returncode == -signal.SIGKILL or proc.returncode == 0
    # A final, uninterrupted run finishes the job.
    LogUploader(tmp_path / "obs", log_server.url, batch_size=batch, backoff_s=0.01).upload()
    assert sorted(log_server.seqs) == list(range(total))  # nothing lost, nothing counted twice
    assert sum(log_server.batches.values()) == total
    assert held_resends == 4 and log_server.duplicates >= held_resends  # each held batch re-sent, same id
    assert PredictionLog(tmp_path / "obs").stats()["records"] == 0
