"""``observed(model, ObserveConfig(...))``: metrics, sampled prediction log, drift and shadow for one model.

Observation is opt-in per model and lives in a wrapper, so a plain ``Model.run`` is untouched
(no branch, no flag: off costs nothing). The wrapper's ``run`` adds, on the caller's thread, two
clock reads, one array append (the latency, binned later in bulk) and one random draw; the rare
sampled request is copied into a bounded mailbox (``_worker.Mailbox``: an append, no lock, no wake-up). Everything
else — encoding inputs by the privacy policy, drift histograms and PSI, sqlite writes, stats
snapshots — happens on one background worker at low CPU priority, in batches.
A full mailbox sheds (counted), it never blocks the caller.

That ``run`` is a small C type (``_observed_call.c``) where the package was built with a compiler,
and a Python closure that does the same where it was not (``ObservedModel.hot_path`` says which).
Measured in place on the MNIST CNN at batch 1 (~29 µs): the closure adds ~2.2 %, the C type ~1 %.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.device_runtime._drift import DriftMonitor, DriftStatus
from edgewise.device_runtime._frozen import frozen, thawed
from edgewise.device_runtime._metrics import Metrics, Series, SeriesKey, default_metrics
from edgewise.device_runtime._model import Model
from edgewise.device_runtime._placed import PlacedModel
from edgewise.device_runtime._predlog import INPUT_POLICIES, PredictionLog, encode_tensors
from edgewise.device_runtime._shadow import PromotionDecision, PromotionPolicy, ShadowRunner, decide_promotion
from edgewise.device_runtime._worker import Mailbox
from edgewise.errors import InputError

try:
    from edgewise.device_runtime._observed_call import ObservedCall
except ImportError:  # installed without a C compiler: the Python request path does the same, a little slower
    ObservedCall = None  # type: ignore[assignment,misc]

SNAPSHOT_PREFIX = "stats-"

# bound once: module globals read faster than attribute chains on the hot path
_perf = time.perf_counter
_random = random.random
_MAX_PENDING = 200_000  # latencies waiting for a fold before a sampled request folds them itself


@dataclass(frozen=True)
class ObserveConfig:
    """What to observe. ``directory`` holds the prediction log and stats snapshots (None: metrics only).

    By convention a device keeps it in ``<model store>/observe`` so ``edgewise stats STORE`` finds it.
    ``sample_rate`` is the fraction of requests copied to the background worker, for the log and
    the drift histograms alike. ``inputs``: "full", "hashed" (sha256, the default: joinable but
    private) or "dropped".
    """

    directory: Path | None = None
    metrics: Metrics | None = None
    sample_rate: float = 0.01
    log: bool = True
    inputs: str = "hashed"
    outputs: bool = True
    max_records: int = 10_000
    max_bytes: int = 64 << 20
    drift: bool = True
    drift_threshold: float = 0.2
    drift_min_samples: int = 200
    drift_window: int = 2000
    queue_size: int = 256
    flush_interval_s: float = 0.5
    snapshot_interval_s: float = 5.0
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise InputError(f"sample_rate must be within [0, 1], not {self.sample_rate}")
        if self.inputs not in INPUT_POLICIES:
            raise InputError(f"inputs policy {self.inputs!r} is not one of {', '.join(INPUT_POLICIES)}",
                             hint="Use 'hashed' to keep inputs private but joinable, 'dropped' to keep none.")


class ObservedModel(PlacedModel):
    """A ``Model`` with observation on. Same ``run`` contract; extra: drift, shadow, snapshots.

    Thread-safe like ``Model``. ``close()`` flushes the log and stops the workers.
    """

    def __init__(self, model: Model, config: ObserveConfig | None = None) -> None:
        if not isinstance(model, Model):
            raise InputError(f"observed() takes a tensor Model, not {type(model).__name__}",
                             hint="Text models are not observed yet; count their cloud fallbacks with "
                                  "device_runtime.record_fallback().")
        self.model = model
        self.config = config = config or ObserveConfig()
        manifest = model.bundle.manifest if model.bundle is not None else None
        self.name = manifest.name if manifest else model.path.stem
        self.version = manifest.version if manifest else ""
        self.task = manifest.task if manifest else "generic"
        self.metrics = config.metrics or default_metrics()
        placement = model.placement
        self._series: Series = self.metrics.series(SeriesKey(self.name, self.version, placement.backend,
                                                             placement.device, placement.accelerator))
        self._record = self._series.record
        self._validate = model._validate  # inputs are put in dict form only for the sampled requests
        self._rate = config.sample_rate
        self._shadow_rate = 0.0
        self._draw_below = self._rate  # max(sample rate, shadow rate)
        self._served_by = f"device:{placement.backend}/{placement.device}"
        reference = getattr(manifest, "reference", None) if manifest else None
        self.drift: DriftMonitor | None = None
        if config.drift and reference:
            self.drift = DriftMonitor(reference, self.task, threshold=config.drift_threshold,
                                      min_samples=config.drift_min_samples, window=config.drift_window)
        self._drift_flagged = False
        self.log: PredictionLog | None = None
        if config.directory is not None and config.log:
            self.log = PredictionLog(Path(config.directory), max_records=config.max_records,
                                     max_bytes=config.max_bytes)
        self.shadow: ShadowRunner | None = None
        self._shadow_policy: PromotionPolicy | None = None
        self._shadow_version = ""
        self._last_decision: str | None = None
        self._closed = False
        self._next_snapshot = time.monotonic() + config.snapshot_interval_s
        self._mailbox = Mailbox(self._process, capacity=config.queue_size, interval=config.flush_interval_s,
                                name=f"edgewise-observe-{self.name}", tick=self._tick)
        self.run = self._observed_run()
        self.hot_path = "python" if ObservedCall is None else "c"  # what _observed_run just chose

    # ----------------------------------------------------------------- the hot path

    run: Callable[[Any], dict[str, np.ndarray]]
    """``Model.run``'s contract, timed and sampled (built per instance by ``_observed_run``)."""

    hot_path: str
    """Which request path ``run`` is: "c" (the compiled ``ObservedCall``) or "python" (the closure)."""

    def _observed_run(self) -> Callable[[Any], dict[str, np.ndarray]]:
        """``run`` over the model's own pipeline (``Model._pipeline``): validation and the engine's run
        (or a LiteRT model's engine runner) are called from here, so observation adds no Python frame
        to the request, only its clock reads, the latency append and one draw.

        The compiled ``ObservedCall`` where it was built; else ``_python_run``, which behaves the same.
        Either exposes the engine call it wraps as ``run.engine_run``.
        """
        validate, model_run = self.model._pipeline()
        if ObservedCall is None:
            return self._python_run(validate, model_run)
        return ObservedCall(
            validate=validate, run=model_run, record=self._record, failed=self._series.error,
            freeze=self._frozen_request, log_queue=self._mailbox.queue, log_capacity=self._mailbox.capacity,
            starved=self._mailbox_full, offer_shadow=self._offer_shadow, log_rate=self._rate,
            shadow_rate=self._shadow_rate, seed=random.getrandbits(64) | 1)

    def _python_run(self, validate: Callable[[Any], Any] | None,
                    model_run: Callable[[Any], dict[str, np.ndarray]]) -> Callable[[Any], dict[str, np.ndarray]]:
        """``ObservedCall``'s behaviour as a closure, for installs without the compiled module.
        Measured on the tiny MLP: a method calling ``model.run`` cost ~0.1 µs more than this closure.
        """
        record, failed = self._record, self._series.error
        perf, draw_random = _perf, _random
        log_rate, log_queue, log_capacity = self._rate, self._mailbox.queue, self._mailbox.capacity
        starved, offer_shadow, frozen_request = self._mailbox_full, self._offer_shadow, self._frozen_request
        observed = self  # _draw_below and _shadow_rate change when a shadow is attached or detached

        def run(inputs: Any) -> dict[str, np.ndarray]:
            start = perf()
            try:
                outputs = model_run(inputs if validate is None else validate(inputs))
            except BaseException as exc:
                failed(type(exc).__name__)
                raise
            elapsed = perf() - start
            record(elapsed)
            draw = draw_random()
            if draw < observed._draw_below:
                # Sampled (one draw decides the log's and the shadow's sample): copied before the
                # caller can reuse its buffers, as ``frozen`` copies. Written out here, not through
                # helpers, on purpose: in place every Python call on this path costs µs (the engine
                # has evicted the code from the caches); a sample measured ~25 µs through helper
                # functions and a mailbox method, ~9 µs like this (MNIST CNN, 3 KB input).
                try:
                    inputs_copy = [(k, v.copy(), None, v.shape) if v.dtype.hasobject else
                                   (k, v.tobytes(), v.dtype, v.shape) for k, v in inputs.items()]
                except AttributeError:  # not a dict of arrays: a bare array, lists, ...
                    inputs_copy = frozen_request(inputs)
                outputs_copy = [(k, v.copy(), None, v.shape) if v.dtype.hasobject else
                                (k, v.tobytes(), v.dtype, v.shape) for k, v in outputs.items()]
                if draw < log_rate:
                    if len(log_queue) < log_capacity:
                        log_queue.append((inputs_copy, outputs_copy, start, elapsed))
                    else:
                        starved()
                if draw < observed._shadow_rate:
                    offer_shadow(inputs_copy, outputs_copy)
            return outputs

        run.engine_run = model_run  # type: ignore[attr-defined]
        return run

    def _frozen_request(self, tensors: Any) -> list[tuple]:
        """``frozen`` for a sampled request that is not a dict of arrays: validated into one first."""
        return frozen(tensors) or frozen(self._validate(tensors))

    def _set_shadow_rate(self, rate: float) -> None:
        self._shadow_rate = rate
        self._draw_below = max(self._rate, rate)
        if self.hot_path == "c":
            self.run.shadow_rate = rate  # type: ignore[attr-defined]

    def _mailbox_full(self) -> None:
        """A sampled request found the log's mailbox full: the worker is behind (or starved of CPU)."""
        self._mailbox.count_shed()
        if self._series.pending() > _MAX_PENDING:  # a starved worker has not folded either: fold here
            self._series.fold()

    def _offer_shadow(self, inputs_copy: list[tuple], outputs_copy: list[tuple]) -> None:
        shadow = self.shadow
        if shadow is not None:
            shadow.offer(inputs_copy, outputs_copy)

    @property
    def sampled(self) -> int:
        """Sampled requests handled by the worker so far (in the log and the drift histograms)."""
        return self._mailbox.handled

    @property
    def shed(self) -> int:
        """Sampled requests dropped because the worker's mailbox was full."""
        return self._mailbox.shed

    # ----------------------------------------------------------------- Model's surface

    @property
    def signature(self):
        return self.model.signature

    @property
    def placement(self):
        return self.model.placement

    @property
    def bundle(self):
        return self.model.bundle

    @property
    def path(self) -> Path:
        return self.model.path

    def __repr__(self) -> str:
        return f"ObservedModel({self.model!r})"

    # ----------------------------------------------------------------- fallbacks, shadow, drift

    def record_fallback(self, *, served_by: str, reason: str) -> None:
        """Count a request of this model that was served elsewhere (the cloud router calls this)."""
        self.metrics.record_fallback(self.name, served_by=served_by, reason=reason, version=self.version)

    def attach_shadow(self, candidate: Model, *, rate: float = 0.1, policy: PromotionPolicy | None = None,
                      queue_size: int = 64) -> ShadowRunner:
        """Run ``candidate`` beside this model on a ``rate`` fraction of requests, in the background.

        ``policy`` defaults to the candidate bundle's own gate budgets (``PromotionPolicy.from_manifest``).
        """
        if self.shadow is not None:
            self.detach_shadow()
        cmanifest = candidate.bundle.manifest if candidate.bundle is not None else None
        task = cmanifest.task if cmanifest else self.task
        gate_output = ((cmanifest.metrics.get("gate") or {}).get("output") if cmanifest else None)
        names = [spec.name for spec in self.model.signature.outputs]
        output = gate_output if gate_output in names else (names[0] if names else None)
        self._shadow_policy = policy or PromotionPolicy.from_manifest(cmanifest.metrics if cmanifest else {}, task)
        self._shadow_version = cmanifest.version if cmanifest else candidate.path.stem
        self.shadow = ShadowRunner(candidate.run, output=output, classification=task == "classification",
                                   queue_size=queue_size)
        self._last_decision = None
        self._set_shadow_rate(rate)
        return self.shadow

    def detach_shadow(self) -> None:
        self._set_shadow_rate(0.0)
        if self.shadow is not None:
            self.shadow.close()
        self.shadow = None

    def shadow_decision(self) -> PromotionDecision | None:
        """The promotion policy applied to the shadow figures so far (None without a shadow).

        A change of verdict is written to the prediction log, so the result goes upstream with it.
        """
        if self.shadow is None or self._shadow_policy is None:
            return None
        decision = decide_promotion(self.shadow.metrics(), self._shadow_policy)
        if decision.action != self._last_decision:
            self._last_decision = decision.action
            self._event("shadow", {"candidate": self._shadow_version, **decision.to_dict()})
        return decision

    def drift_status(self) -> DriftStatus | None:
        return self.drift.status() if self.drift is not None else None

    # ----------------------------------------------------------------- flushing and figures

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every sampled request so far is in the log and the drift histograms."""
        self._mailbox.flush(timeout)
        if self.shadow is not None:
            self.shadow.drain(timeout)

    def snapshot(self) -> dict[str, Any]:
        """This model's figures as plain data: what the stats file and ``edgewise stats`` show."""
        mine = [m for m in self.metrics.snapshot()["models"]
                if m["model"] == self.name and m["version"] == self.version]
        drift = self.drift_status()
        out: dict[str, Any] = {
            "model": self.name, "version": self.version, "taken_at": time.time(), "pid": os.getpid(),
            "metrics": mine[0] if mine else None, "sampled": self.sampled, "shed": self.shed,
            "sample_rate": self._rate, "drift": drift.to_dict() if drift else None,
            "log": self.log.stats() if self.log is not None else None,
            "fallbacks": [f for f in self.metrics.snapshot()["fallbacks"] if f["model"] == self.name],
        }
        if self.shadow is not None:
            decision = self.shadow_decision()
            out["shadow"] = {"candidate": self._shadow_version, "rate": self._shadow_rate,
                             **self.shadow.metrics(), "decision": decision.to_dict() if decision else None}
        return out

    def write_snapshot(self) -> Path | None:
        """Atomically replace ``<directory>/stats-<model>-<version>.json``."""
        if self.config.directory is None:
            return None
        folder = Path(self.config.directory)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{SNAPSHOT_PREFIX}{self.name}-{self.version or 'unversioned'}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.snapshot(), indent=1, default=_json_default), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def close(self) -> None:
        """Flush the log, write a last snapshot (shadow figures included), stop the workers.

        The wrapped ``Model`` stays open: it belongs to the caller.
        """
        if self._closed:
            return
        self._closed = True
        self._mailbox.close()
        self.write_snapshot()
        self.detach_shadow()
        if self.log is not None:
            self.log.close()

    # ----------------------------------------------------------------- the background worker

    def _event(self, kind: str, body: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.append([{"kind": kind, "model": self.name, "version": self.version, "ts": time.time(), **body}])

    def _tick(self) -> None:
        self._series.fold()  # every flush interval: the pending latencies never pile up
        if time.monotonic() >= self._next_snapshot:
            self._next_snapshot = time.monotonic() + self.config.snapshot_interval_s
            with contextlib.suppress(OSError):  # a full disk must not stop the worker; retried next time
                self.write_snapshot()

    def _process(self, items: list[tuple]) -> None:
        records = []
        wall_offset = time.time() - _perf()  # the requests' perf_counter stamps -> wall-clock time
        for frozen_inputs, frozen_outputs, start, elapsed in items:
            try:
                feed = self._validate(thawed(frozen_inputs))  # it ran, so it validates again
                outputs = thawed(frozen_outputs)
            except Exception:  # never let one odd request stop the worker's batch
                self._series.error("prediction_log_input")
                continue
            ts = start + elapsed + wall_offset
            if self.drift is not None:
                self.drift.update(feed, outputs)
            if self.log is not None:
                records.append({
                    "kind": "prediction", "model": self.name, "version": self.version, "ts": ts,
                    "served_by": self._served_by, "latency_ms": elapsed * 1e3,
                    "batch": int(next(iter(feed.values())).shape[0]) if feed else 0,
                    "input_policy": self.config.inputs, "inputs": encode_tensors(feed, self.config.inputs),
                    "outputs": encode_tensors(outputs, "full") if self.config.outputs else None,
                    **({"labels": self.config.labels} if self.config.labels else {}),
                })
        if self.drift is not None:
            status = self.drift.status()
            for feature, value in status.psi.items():
                self._series.gauges[f"drift_psi:{feature}"] = value
            self._series.gauges["drift_flag"] = 1.0 if status.flagged else 0.0
            if status.flagged != self._drift_flagged:
                self._drift_flagged = status.flagged
                records.append({"kind": "drift", "model": self.name, "version": self.version, "ts": time.time(),
                                **status.to_dict()})
        if self.log is not None and records:
            try:
                self.log.append(records)
            except Exception:  # never let the log kill the worker (disk full, file locked)
                self._series.error("prediction_log_write")


def observed(model: Model, config: ObserveConfig | None = None, **options: Any) -> ObservedModel:
    """Wrap ``model`` with observation: ``observed(model, directory=store / "observe", sample_rate=0.01)``."""
    if options:
        config = ObserveConfig(**{**(config.__dict__ if config else {}), **options})
    return ObservedModel(model, config)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")

