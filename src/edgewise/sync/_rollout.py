"""Whether a release applies to this device: a pure decision over plain data.

Staged rollout uses a deterministic cohort per (model, device): a hash of both mapped to
[0, 100). A device is in a rollout of p % when its cohort is below p, so a 10 % rollout is the
same 10 % on every check, and raising p only ever adds devices (monotonic growth).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass, field

from edgewise._version import __version__
from edgewise.sync._release import Release


@dataclass(frozen=True)
class DeviceProfile:
    """What the device tells the update logic about itself (the host app fills it in)."""

    device_id: str
    runtime_version: str = __version__
    ram_bytes: int | None = None
    backends: tuple[str, ...] = field(default_factory=tuple)  # empty: do not filter on backends


@dataclass(frozen=True)
class Decision:
    apply: bool
    reason: str


def cohort(device_id: str, model: str) -> float:
    """The device's position in [0, 100) for ``model``'s rollouts (different models, different cohorts)."""
    digest = hashlib.sha256(f"{model}\0{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


def version_key(version: str) -> tuple:
    """Order "1.10.0" after "1.9.2"; numeric parts compare as numbers, others as text."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"[.\-+]", version))


def decide(release: Release, device: DeviceProfile, *, installed: str | None,
           bad_versions: Collection[str] = ()) -> Decision:
    """Apply ``release`` on ``device``? The reason is shown to operators either way."""
    if installed == release.version:
        return Decision(False, f"{release.model} {release.version} is already installed")
    if release.version in bad_versions:
        return Decision(False, f"{release.model} {release.version} failed its post-install check here before")
    if installed is not None and version_key(release.version) < version_key(installed):
        return Decision(False, f"release {release.version} is older than the installed {installed}")
    if release.shadow:
        return Decision(False, f"{release.version} is a shadow release: evaluated beside the current model, "
                               "not installed as current")
    if version_key(device.runtime_version) < version_key(release.min_runtime_version):
        return Decision(False, f"needs edgewise >= {release.min_runtime_version}, this device runs "
                               f"{device.runtime_version}")
    need_ram = release.requirements.get("min_ram_bytes")
    if need_ram and device.ram_bytes is not None and device.ram_bytes < need_ram:
        return Decision(False, f"needs {need_ram} bytes of RAM, this device has {device.ram_bytes}")
    wanted = set(release.requirements.get("backends") or ())
    if wanted and device.backends and not wanted & set(device.backends):
        return Decision(False, f"needs one of the backends {sorted(wanted)}, this device has {list(device.backends)}")
    position = cohort(device.device_id, release.model)
    if position >= release.rollout:
        return Decision(False, f"rollout is at {release.rollout:g} %, this device's cohort is {position:.2f} %")
    return Decision(True, f"update {installed or 'nothing'} -> {release.version} "
                          f"(cohort {position:.2f} % < rollout {release.rollout:g} %)")
