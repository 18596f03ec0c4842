"""Progress lines for long conversions: what runs now, and how long each step took."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Progress:
    """``with progress.step("export ONNX"):`` prints ``[2/7] export ONNX ... 3.1 s`` to stderr."""

    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled

    @contextmanager
    def step(self, text: str) -> Iterator[None]:
        self.done += 1
        start = time.perf_counter()
        self._write(f"[{self.done}/{self.total}] {text} ...")
        try:
            yield
        except BaseException:
            self._write(f"[{self.done}/{self.total}] {text} failed after {time.perf_counter() - start:.1f} s")
            raise
        self._write(f"[{self.done}/{self.total}] {text} done in {time.perf_counter() - start:.1f} s")

    def info(self, text: str) -> None:
        self._write(f"      {text}")

    def _write(self, line: str) -> None:
        if self.enabled:
            print(line, file=self.stream, flush=True)
