"""Over-the-air model updates on The Update Framework (python-tuf).

Publisher side (CI): ``generate_keys`` and ``Publisher`` write a TUF repository of bundle releases
(plain files; any static server serves it). Device side: ``SyncClient`` checks a channel, decides
with a deterministic rollout cohort whether the release applies, downloads with resume, verifies
against the signed metadata, and installs into a ``ModelStore``: atomic switch, previous version
kept, automatic rollback when the new model fails its post-install check or fails to load.

Trust comes from python-tuf's ``Updater`` (signatures, thresholds, versions, expiry): edgewise adds
policy and the crash-safe install, no cryptography of its own.
"""

from edgewise.sync._keys import generate_keys
from edgewise.sync._release import Release
from edgewise.sync._rollout import Decision, DeviceProfile, cohort, decide
from edgewise.sync._upload import LogUploader, UploadReport
from edgewise.sync.client import SyncClient, UpdateCheck, UpdateResult
from edgewise.sync.publisher import Publisher
from edgewise.sync.store import Installed, ModelStore

__all__ = [
    "Decision",
    "DeviceProfile",
    "Installed",
    "LogUploader",
    "ModelStore",
    "Publisher",
    "Release",
    "SyncClient",
    "UpdateCheck",
    "UpdateResult",
    "UploadReport",
    "cohort",
    "decide",
    "generate_keys",
]
