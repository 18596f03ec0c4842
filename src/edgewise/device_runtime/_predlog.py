"""The sampled prediction log: a bounded on-device store that survives restarts (sqlite3, WAL).

Why sqlite: one file, atomic transactions, safe between the app (writer) and an uploader in
another process, in the standard library on every Python a device runs.

Rules the store keeps, whatever the process does or when it is killed:

* **bounded**: after every write, the oldest records beyond ``max_records`` / ``max_bytes`` are
  deleted in the same transaction and counted (``dropped``). Records already sealed into an
  upload batch are kept until the server acknowledges them (at most ``batch_size`` < cap), so the
  cap counts them too and still holds.
* **nothing lost, nothing twice**: ``seal_batch`` gives the oldest unsent records a batch id and
  commits that *before* anything is sent; a crashed uploader finds the same batch, with the same id
  and the same records, and sends it again; the server dedupes by id. ``ack_batch`` deletes them only
  after the server said yes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.errors import PredictionLogError

try:  # some embedded Python builds leave sqlite3 out: metrics still work there, the log says what is missing
    import sqlite3
except ImportError:  # pragma: no cover - CPython on every platform we test ships it
    sqlite3 = None  # type: ignore[assignment]

INPUT_POLICIES = ("full", "hashed", "dropped")
LOG_NAME = "predlog.sqlite"
DEFAULT_MAX_RECORDS = 10_000
DEFAULT_MAX_BYTES = 64 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL,
    batch_id TEXT
);
CREATE INDEX IF NOT EXISTS records_batch ON records(batch_id, id);
CREATE TABLE IF NOT EXISTS batches (batch_id TEXT PRIMARY KEY, created REAL NOT NULL, records INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Batch:
    """Records sealed for upload under one idempotency key."""

    batch_id: str
    records: list[dict[str, Any]]


def encode_tensors(tensors: Mapping[str, np.ndarray], policy: str) -> dict[str, Any] | None:
    """Inputs (or outputs) as JSON: ``full`` keeps the bytes (base64), ``hashed`` a sha256, ``dropped`` nothing.

    ``hashed`` still lets the owner join a record to data they hold (same input -> same hash)
    without the device ever sending the content.
    """
    if policy == "dropped":
        return None
    out: dict[str, Any] = {}
    for name, value in tensors.items():
        array = np.ascontiguousarray(value)
        entry: dict[str, Any] = {"dtype": _dtype_name(array.dtype), "shape": list(array.shape)}
        if array.dtype.kind in "OUS":  # strings: JSON as they are
            entry["data" if policy == "full" else "sha256"] = (
                array.tolist() if policy == "full"
                else hashlib.sha256(json.dumps(array.tolist()).encode()).hexdigest())
        elif policy == "full":
            entry["b64"] = base64.b64encode(array.tobytes()).decode("ascii")
        else:
            entry["sha256"] = hashlib.sha256(array.tobytes()).hexdigest()
        out[name] = entry
    return out


_DTYPE_NAMES: dict[np.dtype, str] = {}


def _dtype_name(dtype: np.dtype) -> str:
    """``str(dtype)`` costs ~20 µs in numpy 2 (it inspects the type hierarchy): cached."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype)
    return name


def decode_tensors(encoded: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inverse of ``encode_tensors(..., "full")`` (for the receiving side and tests)."""
    return {name: np.frombuffer(base64.b64decode(e["b64"]), dtype=e["dtype"]).reshape(e["shape"])
            for name, e in encoded.items()}


class PredictionLog:
    """One sqlite file of records; safe from several threads and processes (each opens its own).

    ``max_records``/``max_bytes`` bound it (``max_bytes`` counts record bodies, the part that
    grows; sqlite reuses freed pages, so the file stays proportional to the cap).
    """

    def __init__(self, path: Path, *, max_records: int | None = None, max_bytes: int | None = None) -> None:
        if max_records is not None and max_records < 2:
            raise ValueError("max_records must be >= 2")
        if sqlite3 is None:
            raise PredictionLogError("the prediction log needs Python's sqlite3 module, which this build lacks",
                                     hint="Use a Python with sqlite3, or observe with directory=None (metrics only).")
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path.mkdir(parents=True, exist_ok=True)
            path = path / LOG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app kills
            self._db.execute("PRAGMA journal_size_limit=4194304")
            self._db.executescript(_SCHEMA)
            meta = dict(self._db.execute("SELECT key, value FROM meta WHERE key LIKE 'cap_%'").fetchall())
        except sqlite3.Error as exc:
            raise PredictionLogError(f"cannot open the prediction log {path}: {exc}") from exc
        # Caps given by the writer are kept in the file, so a reader (uploader, CLI) that gives none uses them.
        self.max_records = max_records or meta.get("cap_records") or DEFAULT_MAX_RECORDS
        self.max_bytes = max_bytes or meta.get("cap_bytes") or DEFAULT_MAX_BYTES
        if max_records is not None or max_bytes is not None:
            with self._tx() as db:
                db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                               [("cap_records", self.max_records), ("cap_bytes", self.max_bytes)])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise PredictionLogError(f"prediction log {self.path}: {exc}") from exc

    # ----------------------------------------------------------------- writing

    def append(self, records: list[dict[str, Any]]) -> int:
        """Write records (each needs ``kind``, ``model``, ``version``; the rest is the body) and enforce the cap.

        Returns how many old records were dropped to make room.
        """
        if not records:
            return 0
        rows = []
        for record in records:
            body = json.dumps(record, separators=(",", ":"), default=_json_default)
            rows.append((float(record.get("ts", time.time())), record["kind"], record["model"],
                         record["version"], body, len(body)))
        with self._tx() as db:
            db.executemany("INSERT INTO records(ts, kind, model, version, body, size) VALUES (?,?,?,?,?,?)", rows)
            _bump(db, "written", len(rows))
            dropped = self._enforce_cap(db)
        return dropped

    def _enforce_cap(self, db: sqlite3.Connection) -> int:
        count, size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records").fetchone()
        if count <= self.max_records and size <= self.max_bytes:
            return 0
        excess = max(0, count - self.max_records)
        dropped = 0
        if excess:
            dropped += db.execute("DELETE FROM records WHERE id IN (SELECT id FROM records WHERE batch_id IS NULL "
                                  "ORDER BY id LIMIT ?)", (excess,)).rowcount
        size = db.execute("SELECT COALESCE(SUM(size), 0) FROM records").fetchone()[0]
        if size > self.max_bytes:
            over, freed, doomed = size - self.max_bytes, 0, []
            for rid, rsize in db.execute("SELECT id, size FROM records WHERE batch_id IS NULL ORDER BY id"):
                if freed >= over:
                    break
                doomed.append((rid,))
                freed += rsize
            db.executemany("DELETE FROM records WHERE id = ?", doomed)
            dropped += len(doomed)
        if dropped:
            _bump(db, "dropped", dropped)
        return dropped

    # ----------------------------------------------------------------- uploading

    def pending_batch(self) -> Batch | None:
        """The batch sealed earlier and not yet acknowledged (after a crash: the one to resend)."""
        with self._lock:
            row = self._db.execute("SELECT batch_id FROM batches ORDER BY created LIMIT 1").fetchone()
            if row is None:
                return None
            bodies = self._db.execute("SELECT body FROM records WHERE batch_id = ? ORDER BY id", (row[0],)).fetchall()
        return Batch(row[0], [json.loads(b) for (b,) in bodies])

    def seal_batch(self, size: int) -> Batch | None:
        """Give the oldest unsent records (at most ``size``) a new batch id, committed before any send.

        Returns the pending batch instead when one exists: one batch in flight at a time, so the
        cap and the order hold.
        """
        pending = self.pending_batch()
        if pending is not None:
            return pending
        size = max(1, min(size, self.max_records // 2))
        batch_id = uuid.uuid4().hex
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM records WHERE batch_id IS NULL ORDER BY id LIMIT ?",
                                            (size,)).fetchall()]
            if not ids:
                return None
            db.executemany("UPDATE records SET batch_id = ? WHERE id = ?", [(batch_id, i) for i in ids])
            db.execute("INSERT INTO batches(batch_id, created, records) VALUES (?,?,?)",
                       (batch_id, time.time(), len(ids)))
        return self.pending_batch()

    def ack_batch(self, batch_id: str) -> int:
        """The server has the batch: delete its records. Idempotent (a second ack deletes nothing)."""
        with self._tx() as db:
            n = db.execute("DELETE FROM records WHERE batch_id = ?", (batch_id,)).rowcount
            if db.execute("DELETE FROM batches WHERE batch_id = ?", (batch_id,)).rowcount:
                _bump(db, "uploaded", n)
                _bump(db, "batches_uploaded", 1)
        return n

    # ----------------------------------------------------------------- reading

    def stats(self) -> dict[str, Any]:
        with self._lock:
            count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records").fetchone()
            sealed = self._db.execute("SELECT COUNT(*) FROM records WHERE batch_id IS NOT NULL").fetchone()[0]
            meta = dict(self._db.execute("SELECT key, value FROM meta WHERE key NOT LIKE 'cap_%'").fetchall())
            kinds = dict(self._db.execute("SELECT kind, COUNT(*) FROM records GROUP BY kind").fetchall())
        return {"path": str(self.path), "records": count, "bytes": size, "sealed": sealed, "by_kind": kinds,
                "max_records": self.max_records, "max_bytes": self.max_bytes,
                "written": meta.get("written", 0), "dropped": meta.get("dropped", 0),
                "uploaded": meta.get("uploaded", 0), "batches_uploaded": meta.get("batches_uploaded", 0)}

    def records(self, kind: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The newest records, oldest first (for ``edgewise stats`` and tests)."""
        with self._lock:
            if kind is None:
                rows = self._db.execute("SELECT body FROM records ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
            else:
                rows = self._db.execute("SELECT body FROM records WHERE kind = ? ORDER BY id DESC LIMIT ?",
                                        (kind, limit)).fetchall()
        return [json.loads(b) for (b,) in reversed(rows)]


def _bump(db: sqlite3.Connection, key: str, by: int) -> None:
    db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = value + ?",
               (key, by, by))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
