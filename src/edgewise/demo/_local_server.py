"""Local servers on 127.0.0.1 for the demo, the tests and the benchmarks: start, wait until ready, stop.

One place for the process handling, so the demo's stand-in cloud and the tests' peers start and stop
the same way: a free port, its own process group, a bounded wait that reports the server's log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it dies or takes too long."""
    stop_at = time.monotonic() + timeout_s
    while time.monotonic() < stop_at:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"server not ready at {url} within {timeout_s} s:\n{log.read_text(errors='replace')[-3000:]}")


def start_llama_server(model: Path, n_ctx: int, log: Path, timeout_s: float = 120) -> tuple[subprocess.Popen, str]:
    """llama-cpp-python's OpenAI-compatible server for ``model``; returns the process and its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "2", "--verbose", "False"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/v1/models", proc, timeout_s, log)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it if it has not gone within 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
