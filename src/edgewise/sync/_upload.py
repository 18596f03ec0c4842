"""Upload the on-device prediction log in batches, exactly once as far as the server can tell.

Protocol (one POST per batch, JSON)::

    POST <endpoint>
    Idempotency-Key: <batch_id>
    {"batch_id": ..., "device_id": ..., "sent_at": ..., "records": [...]}

The server answers 2xx once it has stored the batch, and 2xx (or 409) again for a batch id it
already has. The client side makes this safe against a kill at any instant:

1. ``PredictionLog.seal_batch`` commits the batch id and its records *before* the first send;
2. the POST is retried (transport errors, 408/425/429/5xx; jittered exponential backoff);
3. only an acknowledgement deletes the records (``ack_batch``).

Killed before 1: the records are still unsent and get a batch next time. Killed between 1 and
3: the next run finds the same batch (same id, same records) and sends it again; the server,
which saw the id, does not count it twice.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from edgewise.device_runtime import PredictionLog
from edgewise.errors import RepositoryUnreachableError

_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class UploadReport:
    batches: int
    records: int
    attempts: int
    left: int  # unsent records still in the log (new ones arrived, or max_batches reached)


class LogUploader:
    """Sends ``log``'s records to ``endpoint``. ``client`` lets the app bring its own httpx settings."""

    def __init__(self, log: PredictionLog | Path, endpoint: str, *, device_id: str = "", batch_size: int = 500,
                 retries: int = 5, backoff_s: float = 0.2, max_backoff_s: float = 10.0,
                 timeout: httpx.Timeout | float = _TIMEOUT,
                 headers: dict[str, str] | None = None, client: httpx.Client | None = None) -> None:
        self._own_log = not isinstance(log, PredictionLog)
        self.log = log if isinstance(log, PredictionLog) else PredictionLog(Path(log))
        self.endpoint = endpoint
        self.device_id = device_id
        self.batch_size = batch_size
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._client = client or httpx.Client(timeout=timeout, headers=headers or {})
        self._own_client = client is None

    def upload(self, *, max_batches: int | None = None) -> UploadReport:
        """Send the records the log holds now, in batches (at most ``max_batches``).

        Records written while it runs wait for the next call, so an app logging fast cannot keep one
        upload going forever. Raises ``RepositoryUnreachableError`` when a batch cannot be delivered
        after the retries; everything not acknowledged stays in the log for the next call.
        """
        batches = records = attempts = 0
        budget = self.log.stats()["records"]
        while records < budget and (max_batches is None or batches < max_batches):
            batch = self.log.seal_batch(self.batch_size)
            if batch is None:
                break
            attempts += self._send(batch.batch_id, batch.records)
            records += self.log.ack_batch(batch.batch_id)
            batches += 1
        stats = self.log.stats()
        return UploadReport(batches, records, attempts, stats["records"])

    def _send(self, batch_id: str, records: list[dict]) -> int:
        payload = {"batch_id": batch_id, "device_id": self.device_id, "sent_at": time.time(), "records": records}
        last = ""
        status: int | None = None
        for attempt in range(1, self.retries + 2):
            try:
                response = self._client.post(self.endpoint, json=payload, headers={"Idempotency-Key": batch_id})
                status = response.status_code
                if 200 <= status < 300 or status == 409:
                    return attempt
                last = f"HTTP {status}"
                if status not in RETRY_STATUS:
                    break
                wait = _retry_after(response)
            except httpx.TransportError as exc:
                last, wait = f"{type(exc).__name__}: {exc}", None
            if attempt <= self.retries:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(wait if wait is not None else random.uniform(0, delay))  # full jitter
        raise RepositoryUnreachableError(
            f"could not upload prediction-log batch {batch_id} to {self.endpoint}: {last}", status_code=status,
            hint="The records stay in the on-device log and are sent with the same batch id next time.",
        )

    def close(self) -> None:
        if self._own_client:
            self._client.close()
        if self._own_log:
            self.log.close()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return min(30.0, max(0.0, float(value))) if value else None
    except ValueError:
        return None
