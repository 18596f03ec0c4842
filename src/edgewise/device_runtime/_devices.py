"""What this machine offers: every installed backend's accelerators, plus CPU facts."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

from edgewise.device_runtime._backend import backend_for, known_formats
from edgewise.device_runtime._placement import Accelerator
from edgewise.errors import BackendUnavailableError


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, e.g. inside a container), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class BackendReport:
    """One engine: installed or not (and how to install it), and what it can run on."""

    format: str
    backend: str
    installed: bool
    version: str = ""
    accelerators: tuple[Accelerator, ...] = ()
    problem: str = ""


@dataclass(frozen=True)
class DeviceReport:
    machine: str
    cpu: str
    cores: int
    backends: tuple[BackendReport, ...] = field(default_factory=tuple)


def probe() -> DeviceReport:
    """Probe every known backend. Never raises for a missing engine: it is reported instead."""
    reports = []
    for fmt in known_formats():
        try:
            backend = backend_for(fmt)
            accelerators = tuple(backend.accelerators())  # Core ML raises here off macOS
        except BackendUnavailableError as exc:
            reports.append(BackendReport(format=fmt, backend="-", installed=False, problem=str(exc)))
            continue
        reports.append(BackendReport(
            format=fmt, backend=backend.name, installed=True, version=backend.version(),
            accelerators=accelerators,
        ))
    return DeviceReport(
        machine=f"{platform.system()} {platform.machine()}",
        cpu=_cpu_name(),
        cores=os.cpu_count() or 1,
        backends=tuple(reports),
    )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
