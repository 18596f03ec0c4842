"""Crash safety: a child process installing v2 over v1 is SIGKILLed at many points; the store must cope.

Design. The child installs a padded v2 archive (so that unpacking and hashing take measurable time)
into a store holding v1. It instruments itself - never the store - by wrapping, in its own process,
``tarfile.TarFile.extractfile`` (one point per archive member: mid-unpack), ``os.fsync`` and
``os.replace`` (every durability step: staged files, the rename into models/, the pointer temp file,
its rename, the directory fsyncs) and the store's phase functions (unpack / check / switch). Each
point prints a line naming the phase it is in.

Two kinds of trials:

* deterministic: for every point N of an uninterrupted run, the child stops itself (SIGSTOP) at
  point N and the parent SIGKILLs it - every step of the install is hit exactly;
* timing: the parent kills the child after a delay spread over the whole install, so kills also
  land between points (inside a chunked file write, inside hashing, inside onnxruntime).

After every kill: a fresh ``ModelStore`` opens the root and leaves no staging or temp files, ``load``
serves v1 or v2 and that model reproduces *that* version's output, and installing v2 again completes
with v2 current and v1 previous.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from edgewise.sync.store import ModelStore
from tests.sync.test_store import MODEL, Release, assert_serves, build_release

pytest.importorskip("torch")

PADDING = 24 << 20
TIMING_TRIALS = 16

CHILD = r"""
import os, signal, sys, tarfile
from pathlib import Path
from edgewise.sync import store as S

root, archive, stop_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
state = {"count": 0, "phase": "open"}

def point(label):
    state["count"] += 1
    print(f"point {state['count']} {state['phase']} {label}", flush=True)
    if state["count"] == stop_at:
        print("STOP", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)

def at_points(label, func):
    def wrapper(*args, **kwargs):
        point(label)
        return func(*args, **kwargs)
    return wrapper

def phase(name, func, after):
    def wrapper(*args, **kwargs):
        state["phase"] = name
        point("start")
        result = func(*args, **kwargs)
        point("end")
        state["phase"] = after
        return result
    return wrapper

tarfile.TarFile.extractfile = at_points("extract", tarfile.TarFile.extractfile)
os.fsync = at_points("fsync", os.fsync)
os.replace = at_points("replace", os.replace)
S.unpack_bundle = phase("unpack", S.unpack_bundle, "stage")
S._load_and_check = phase("check", S._load_and_check, "pre-switch")
S._write_json_atomic = phase("switch", S._write_json_atomic, "cleanup")

store = S.ModelStore(root)
print("READY", flush=True)
installed = store.install_archive(archive)
state["phase"] = "done"
print("DONE", installed.version, state["count"], flush=True)
"""


def start_child(root: Path, archive: Path, stop_at: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(archive), str(stop_at)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )


def read_until(proc: subprocess.Popen[str], marker: str, lines: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.strip())
        if line.startswith(marker):
            return
    raise AssertionError(f"child exited ({proc.wait()}) before printing {marker}: {lines[-3:]}")


def kill_and_collect(proc: subprocess.Popen[str], lines: list[str]) -> str:
    """SIGKILL the child, drain its output, return where it was: "<phase> <last point label>" or "completed"."""
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    lines.extend(line.strip() for line in rest.splitlines())
    if any(line.startswith("DONE") for line in lines):
        return "completed"
    points = [line.split()[2:] for line in lines if line.startswith("point ")]
    return " ".join(points[-1]) if points else "startup"


def verify_after_crash(root: Path, releases: dict[str, Release], where: str) -> str:
    store = ModelStore(root)
    assert not any((root / "staging").iterdir()), f"staging leftovers after kill at {where}"
    assert not list((root / "current").glob(".*.tmp")), f"temp pointer left after kill at {where}"
    model = store.load(MODEL)
    served = store.current(MODEL).version
    assert served in ("1", "2"), where
    assert_serves(model, releases[served])
    model.close()
    installed = store.install_archive(releases["2"].archive)
    assert (installed.version, installed.previous) == ("2", "1"), where
    assert_serves(store.load(MODEL), releases["2"])
    return served


@pytest.fixture(scope="module")
def crash_releases(tmp_path_factory) -> dict[str, Release]:
    folder = tmp_path_factory.mktemp("crash-releases")
    return {"1": build_release(folder, "1", seed=1), "2": build_release(folder, "2", seed=2, padding=PADDING)}


def test_killed_install_never_breaks_the_store(tmp_path, crash_releases):
    releases = crash_releases
    template = tmp_path / "template"
    ModelStore(template).install_archive(releases["1"].archive)

    # Dry run: how many instrumented points an uninterrupted install has, and how long it takes.
    lines: list[str] = []
    dry_root = tmp_path / "dry"
    shutil.copytree(template, dry_root)
    proc = start_child(dry_root, releases["2"].archive, 0)
    read_until(proc, "READY", lines)
    began = time.monotonic()
    read_until(proc, "DONE", lines)
    duration = time.monotonic() - began
    proc.wait(timeout=30)
    total_points = int(lines[-1].split()[2])
    assert total_points >= 15, lines

    plans = [("point", n) for n in range(1, total_points + 1)]
    plans += [("delay", duration * 1.1 * i / (TIMING_TRIALS - 1)) for i in range(TIMING_TRIALS)]
    outcomes: list[tuple[str, str, str]] = []
    for index, (kind, value) in enumerate(plans):
        root = tmp_path / f"trial-{index}"
        shutil.copytree(template, root)
        lines = []
        proc = start_child(root, releases["2"].archive, int(value) if kind == "point" else 0)
        if kind == "point":
            read_until(proc, "STOP", lines)
        else:
            read_until(proc, "READY", lines)
            time.sleep(value)
        where = kill_and_collect(proc, lines)
        served = verify_after_crash(root, releases, f"trial {index} ({kind} {value}): {where}")
        outcomes.append((f"{kind} {value:.3f}" if kind == "delay" else f"point {value}", where, served))
        shutil.rmtree(root)

    phases = Counter(where.split()[0] for _, where, _ in outcomes)
    print(f"\n{len(outcomes)} kills, {total_points} instrumented points, install {duration * 1000:.0f} ms")
    for plan, where, served in outcomes:
        print(f"  {plan:<14} killed in {where:<28} -> served v{served}")
    print(f"  phases hit: {dict(phases)}")
    assert len(outcomes) >= 20
    assert {"unpack", "stage", "check", "switch"} <= set(phases), phases
    assert {served for _, _, served in outcomes} == {"1", "2"}
