"""The release record: what a publisher announces for one model on one channel (pure data).

Published as a small TUF target ``releases/<channel>/<model>.json`` (so it is signed and
versioned like everything else), it points at the bundle archive target and carries what a
device needs to decide whether the release applies to it: rollout percentage, requirements,
minimum runtime version. The same fields are repeated as the archive target's TUF custom metadata.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from edgewise.errors import SyncError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(value: str, what: str) -> str:
    """Model names, versions and channels become path segments of TUF targets: keep them plain."""
    if not isinstance(value, str) or not _NAME.match(value) or ".." in value:
        raise SyncError(f"{what} {value!r} is not a plain name (letters, digits, '.', '_', '-')")
    return value


def release_target_path(channel: str, model: str) -> str:
    return f"releases/{check_name(channel, 'channel')}/{check_name(model, 'model name')}.json"


def archive_target_path(model: str, version: str) -> str:
    check_name(model, "model name")
    check_name(version, "version")
    return f"models/{model}/{version}/{model}-{version}.tar"


@dataclass(frozen=True)
class Release:
    model: str
    version: str
    channel: str
    format: str
    archive: str  # TUF target path of the bundle archive
    archive_length: int
    rollout: float = 100.0  # percent of devices (deterministic cohorts)
    min_runtime_version: str = "0.1.0"
    requirements: dict[str, Any] = field(default_factory=dict)  # {"min_ram_bytes": int, "backends": [...]}
    shadow: bool = False
    published: str = ""

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    def custom(self) -> dict[str, Any]:
        """The fields repeated as the archive target's TUF custom metadata."""
        data = asdict(self)
        data.pop("archive")
        return data

    @classmethod
    def from_json(cls, data: bytes) -> Release:
        try:
            raw = json.loads(data)
            release = cls(**raw)
        except (ValueError, TypeError) as exc:
            raise SyncError(f"release record is not valid: {exc}") from exc
        if not 0.0 <= float(release.rollout) <= 100.0:
            raise SyncError(f"release rollout {release.rollout} is outside 0..100")
        check_name(release.model, "model name")
        check_name(release.version, "version")
        return release
