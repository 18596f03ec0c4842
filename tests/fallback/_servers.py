"""Real peers for the fallback tests: llama.cpp's OpenAI-compatible server, MLServer (KServe v2),
and a fault-injecting HTTP proxy of our own between the router and a server.

Every server listens on 127.0.0.1 on a free port, starts within a bounded wait and is killed at the end.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

# start_llama_server and stop are used by the tests through this module, like its own helpers.
from edgewise.demo._local_server import free_port, wait_ready
from edgewise.demo._local_server import start_llama_server as start_llama_server
from edgewise.demo._local_server import stop as stop

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / ".cache" / "peers"
MLSERVER_SPEC = "mlserver==1.7.1"


def mlserver_venv(timeout_s: float = 900) -> Path:
    """MLServer in its own virtual environment (its pins clash with ours), made once and reused."""
    venv = PEERS / "mlserver"
    stamp = venv / ".edgewise-peer"
    if stamp.exists() and stamp.read_text() == MLSERVER_SPEC:
        return venv
    PEERS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt"),
                    MLSERVER_SPEC, "numpy"], check=True, timeout=timeout_s)
    stamp.write_text(MLSERVER_SPEC)
    return venv


MLSERVER_MODEL = '''
import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceResponse


class NumpyMLP(MLModel):
    """A two-layer MLP in numpy: the same weights the device runs as ONNX."""

    async def load(self):
        weights = np.load(self.settings.parameters.uri)
        self.w = {k: weights[k] for k in weights.files}
        return True

    async def predict(self, payload):
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        h = np.maximum(x.reshape(len(x), -1) @ self.w["w1"] + self.w["b1"], 0)
        y = (h @ self.w["w2"] + self.w["b2"]).astype(np.float32)
        return InferenceResponse(model_name=self.name, model_version=self.version,
                                 outputs=[NumpyCodec.encode_output("logits", y)])
'''


def start_mlserver(folder: Path, weights: Path, log: Path) -> tuple[subprocess.Popen, str]:
    import json

    venv = mlserver_venv()
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (folder / "model.py").write_text(MLSERVER_MODEL)
    (folder / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        "metrics_endpoint": None, "parallel_workers": 0, "debug": False}))
    (folder / "model-settings.json").write_text(json.dumps({
        "name": "digits", "implementation": "model.NumpyMLP",
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
        "parameters": {"uri": str(weights), "version": "1"}}))
    env = {**os.environ, "PYTHONPATH": str(folder)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(venv / "bin" / "mlserver"), "start", str(folder)], cwd=folder, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{http_port}"
    wait_ready(f"{url}/v2/models/digits/ready", proc, 120, log)
    return proc, url


class FaultProxy:
    """An HTTP/1.1 proxy that injects one fault per request, chosen by ``policy()``.

    Faults: "ok" (forward), "500", "503" (with Retry-After: 0), "429", "reset" (RST after the
    request), "stall" (never answers), "slow" (forwards the answer in 32-byte pieces, ``slow_delay_s`` apart),
    "cut" (forwards the first 300 bytes of the answer, then closes: a server dying mid-stream).
    ``down()`` stops listening (connections refused); ``up()`` listens again on the same port.
    Each request gets its own upstream connection (``Connection: close``), so faults are per request.
    """

    def __init__(self, upstream: str, policy: Callable[[], str] = lambda: "ok") -> None:
        self.upstream = httpx.URL(upstream)
        self.policy = policy
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.counts: dict[str, int] = {}
        self.slow_delay_s = 0.05  # "slow": pause between 32-byte pieces
        self.active = 0  # requests being answered now, and the most at once
        self.max_active = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(512)
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def down(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None

    def close(self) -> None:
        self._closing.set()
        self.down()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                head, body = _read_request(conn)
            except OSError:
                return
            if head is None:
                return
            fault = self.policy()
            with self._lock:
                self.counts[fault] = self.counts.get(fault, 0) + 1
                self.active += 1
                self.max_active = max(self.max_active, self.active)
            try:
                with contextlib.suppress(OSError):
                    self._answer(conn, fault, head, body)
            finally:
                with self._lock:
                    self.active -= 1

    def _answer(self, conn: socket.socket, fault: str, head: bytes, body: bytes) -> None:
        if fault in ("500", "503", "429"):
            reason = {"500": "Internal Server Error", "503": "Service Unavailable", "429": "Too Many Requests"}[fault]
            extra = "Retry-After: 0\r\n" if fault != "500" else ""
            conn.sendall(f"HTTP/1.1 {fault} {reason}\r\nContent-Length: 12\r\nConnection: close\r\n{extra}\r\n"
                         f"injected {fault}".encode())
            return
        if fault == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return
        if fault == "stall":  # answer nothing; hold the connection until the client gives up
            conn.settimeout(0.05)
            stop_at = time.monotonic() + 60
            while not self._closing.is_set() and time.monotonic() < stop_at:
                try:
                    if not conn.recv(1024):
                        return
                except TimeoutError:
                    continue
            return
        upstream = socket.create_connection((self.upstream.host, self.upstream.port), timeout=60)
        with upstream:
            upstream.sendall(_close_after(head) + body)
            sent = 0
            while True:
                chunk = upstream.recv(65536)
                if not chunk:
                    return
                if fault == "slow":
                    for i in range(0, len(chunk), 32):
                        conn.sendall(chunk[i:i + 32])
                        time.sleep(self.slow_delay_s)
                    continue
                if fault == "cut" and sent + len(chunk) >= 300:
                    conn.sendall(chunk[:300 - sent])
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    return
                conn.sendall(chunk)
                sent += len(chunk)


def _read_request(conn: socket.socket) -> tuple[bytes | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n", body


def _close_after(head: bytes) -> bytes:
    lines = [line for line in head.rstrip(b"\r\n").split(b"\r\n")
             if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


@contextlib.contextmanager
def proxy(upstream: str, policy: Callable[[], str] = lambda: "ok") -> Iterator[FaultProxy]:
    fp = FaultProxy(upstream, policy)
    try:
        yield fp
    finally:
        fp.close()
