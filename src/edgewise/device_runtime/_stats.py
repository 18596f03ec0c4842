"""Read what observed models left in an observe directory, and say it in a few lines (``edgewise stats``).

Observed models write ``stats-<model>-<version>.json`` snapshots (every few seconds and at close)
next to the prediction log, so another process — the CLI, a support tool — sees live figures
without talking to the app.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from edgewise.device_runtime._observe import SNAPSHOT_PREFIX
from edgewise.device_runtime._predlog import LOG_NAME, PredictionLog


def read_stats(directory: Path) -> dict[str, Any]:
    """Snapshots and prediction-log counters found in ``directory`` (plain data; empty when nothing is there)."""
    directory = Path(directory)
    snapshots = []
    for path in sorted(directory.glob(f"{SNAPSHOT_PREFIX}*.json")):
        try:
            snapshots.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue  # being replaced right now, or damaged: the next snapshot will do
    log = None
    if (directory / LOG_NAME).exists():
        opened = PredictionLog(directory / LOG_NAME)
        try:
            log = opened.stats()
        finally:
            opened.close()
    return {"directory": str(directory), "models": snapshots, "log": log}


def format_stats(stats: dict[str, Any], *, now: float | None = None) -> str:
    """A human summary: one block per observed model, then the log."""
    now = time.time() if now is None else now
    lines = []
    for snap in stats["models"]:
        m = snap.get("metrics") or {}
        age = now - float(snap.get("taken_at", now))
        lines.append(f"{snap['model']} {snap['version'] or '(unversioned)'}  (snapshot {age:.0f} s old)")
        if m:
            errors = sum((m.get("errors") or {}).values())
            p50, p99 = m.get("latency_p50_ms"), m.get("latency_p99_ms")
            lines.append(f"  requests {m['requests']}, errors {errors}, served by {m['backend']} on {m['device']}"
                         f" ({m['accelerator']})")
            if m.get("latency_mean_ms") is not None:
                lines.append(f"  latency mean {m['latency_mean_ms']:.3f} ms, p50 <= {_ms(p50)}, p99 <= {_ms(p99)}")
        lines.append(f"  sampled {snap.get('sampled', 0)} (rate {snap.get('sample_rate', 0):g}), "
                     f"shed {snap.get('shed', 0)}")
        for fb in snap.get("fallbacks") or []:
            lines.append(f"  fallback to {fb['served_by']} ({fb['reason']}): {fb['count']}")
        drift = snap.get("drift")
        if drift:
            worst = drift.get("worst")
            value = drift["psi"].get(worst) if worst else None
            state = "FLAGGED" if drift["flagged"] else "ok"
            detail = f"worst {worst} PSI {value:.3f}" if value is not None else "too few samples yet"
            lines.append(f"  drift {state} (threshold {drift['threshold']:g}; {detail})")
        shadow = snap.get("shadow")
        if shadow:
            decision = shadow.get("decision") or {}
            lines.append(f"  shadow {shadow['candidate']}: {shadow.get('samples', 0)} compared, shed "
                         f"{shadow.get('shed', 0)}; {decision.get('action', '?')} ({decision.get('reason', '')})")
    log = stats.get("log")
    if log:
        lines.append(f"prediction log: {log['records']} records ({log['bytes'] / 1e3:.1f} kB) of max "
                     f"{log['max_records']}; written {log['written']}, dropped {log['dropped']}, uploaded "
                     f"{log['uploaded']} in {log['batches_uploaded']} batches, {log['sealed']} awaiting an ack")
    if not lines:
        lines.append(f"no observed model has written figures to {stats['directory']}")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"
