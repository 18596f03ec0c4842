"""The device side of sync: check for a release, download and verify it, install it safely.

Trust comes from python-tuf's ``Updater`` alone: it verifies the chain root -> timestamp ->
snapshot -> targets (signatures, thresholds, versions, expiry) and gives us signed length and
hashes for each file. Everything edgewise adds is policy around it: whether a release applies to
this device (``_rollout.decide``), when to download (the host app's hook), resumable transfer,
and the atomic install with rollback (``store.ModelStore``). Any failure leaves the installed
model untouched and raises one of the SyncError leaves of ``edgewise.errors``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from edgewise.device_runtime import PredictionLog, PromotionDecision
from edgewise.errors import (
    ArtifactVerificationError,
    PromotionRefusedError,
    RepositoryUnreachableError,
    SlowRetrievalError,
    SyncError,
    UntrustedMetadataError,
)
from edgewise.sync._fetcher import HttpxFetcher, Progress
from edgewise.sync._release import Release, release_target_path
from edgewise.sync._rollout import Decision, DeviceProfile, decide
from edgewise.sync._upload import LogUploader, UploadReport
from edgewise.sync.store import Installed, ModelStore


@dataclass(frozen=True)
class UpdateCheck:
    """The answer of ``check``: what is published, what is installed, and whether to update."""

    model: str
    channel: str
    release: Release | None
    installed: str | None
    decision: Decision


@dataclass(frozen=True)
class UpdateResult:
    check: UpdateCheck
    updated: bool
    installed: Installed | None
    reason: str
    downloaded_bytes: int = 0


class SyncClient:
    """Keeps one device's models in step with a TUF repository served over HTTP(S).

    ``trusted_root`` is the repository's initial root metadata, shipped with the app (the only
    thing trusted without verification). ``download_allowed`` lets the host app defer downloads
    (metered network, low battery): it receives the release and returns False to wait.
    """

    def __init__(self, repo_url: str, store: ModelStore | Path, device: DeviceProfile, *,
                 trusted_root: Path | bytes | None = None, fetcher: HttpxFetcher | None = None,
                 download_allowed: Callable[[Release], bool] | None = None, progress: Progress | None = None,
                 config: UpdaterConfig | None = None) -> None:
        self.store = store if isinstance(store, ModelStore) else ModelStore(Path(store))
        self.device = device
        self.repo_url = repo_url.rstrip("/")
        self.fetcher = fetcher or HttpxFetcher()
        self.download_allowed = download_allowed
        self.progress = progress
        self.config = config or UpdaterConfig()
        self._metadata_dir = self.store.root / "tuf"
        self._metadata_dir.mkdir(parents=True, exist_ok=True)
        self._downloads = self.store.root / "downloads"
        self._downloads.mkdir(parents=True, exist_ok=True)
        if trusted_root is not None:
            data = trusted_root if isinstance(trusted_root, bytes) else Path(trusted_root).read_bytes()
            if not (self._metadata_dir / "root.json").exists():
                (self._metadata_dir / "root.json").write_bytes(data)
        if not (self._metadata_dir / "root.json").exists():
            raise SyncError("no trusted root metadata for this repository",
                            hint="Pass trusted_root= (the repository's trusted_root.json shipped with the app).")

    # --- public ---------------------------------------------------------------------------

    def check(self, model: str, channel: str = "stable") -> UpdateCheck:
        """Refresh the signed metadata and decide whether ``model``'s release on ``channel`` applies."""
        with _mapped_errors(self.repo_url):
            updater = self._updater()
            updater.refresh()
            return self._check(updater, model, channel)

    def update(self, model: str, channel: str = "stable") -> UpdateResult:
        """Check, then download (resuming), verify, install and switch; the old model stays until then."""
        with _mapped_errors(self.repo_url):
            updater = self._updater()
            updater.refresh()
            check = self._check(updater, model, channel)
            if check.release is None or not check.decision.apply:
                return UpdateResult(check, False, self.store.current(model), check.decision.reason)
            release = check.release
            if self.download_allowed is not None and not self.download_allowed(release):
                return UpdateResult(check, False, self.store.current(model), "the host app deferred the download")
            archive, received = self._fetch_archive(updater, release)
        installed = self.store.install_archive(archive, expected_model=model, expected_version=release.version)
        archive.unlink(missing_ok=True)
        return UpdateResult(check, True, installed, check.decision.reason, downloaded_bytes=received)

    def fetch(self, model: str, channel: str = "stable") -> tuple[Release, Path, int]:
        """Download and verify the published archive without installing it (prefetch on a good network).

        Returns the release, the verified archive in the store's downloads folder, and the bytes
        received by this call; a later ``update`` finds the file complete and does not fetch again.
        """
        with _mapped_errors(self.repo_url):
            updater = self._updater()
            updater.refresh()
            check = self._check(updater, model, channel)
            if check.release is None:
                raise SyncError(check.decision.reason)
            archive, received = self._fetch_archive(updater, check.release)
            return check.release, archive, received

    def rollback(self, model: str) -> Installed:
        return self.store.rollback(model)

    # --- shadow and promotion (issue 8) -------------------------------------------------------

    def stage(self, model: str, channel: str = "shadow") -> UpdateResult:
        """Download, verify, install and check ``channel``'s release WITHOUT switching to it.

        The staged version is what ``device_runtime.ObservedModel.attach_shadow`` runs beside the
        served one; ``promote`` switches to it once the shadow figures pass the promotion policy.
        Same rollout and device checks as ``update``.
        """
        with _mapped_errors(self.repo_url):
            updater = self._updater()
            updater.refresh()
            check = self._check(updater, model, channel)
            if check.release is None or not check.decision.apply:
                return UpdateResult(check, False, None, check.decision.reason)
            release = check.release
            if self.download_allowed is not None and not self.download_allowed(release):
                return UpdateResult(check, False, None, "the host app deferred the download")
            archive, received = self._fetch_archive(updater, release)
        staged = self.store.install_archive(archive, expected_model=model, expected_version=release.version,
                                            switch=False)
        archive.unlink(missing_ok=True)
        return UpdateResult(check, True, staged, "staged (not served until promoted)", downloaded_bytes=received)

    def promote(self, model: str, version: str, decision: PromotionDecision) -> Installed:
        """Switch to a staged ``version`` only if the shadow ``decision`` says so; else PromotionRefusedError."""
        if not decision.promote:
            raise PromotionRefusedError(
                f"{model} {version} is not promoted: {decision.action} ({decision.reason})",
                model=model, version=version, action=decision.action,
            )
        installed = self.store.promote(model, version, reason=decision.reason)
        log = PredictionLog(self.store.observe_dir)  # the verdict goes upstream with the next upload
        try:
            log.append([{"kind": "promotion", "model": model, "version": version,
                         "previous": installed.previous, **decision.to_dict()}])
        finally:
            log.close()
        return installed

    def upload_log(self, endpoint: str, log: PredictionLog | Path | None = None, **options: Any) -> UploadReport:
        """Send the store's prediction log (``<store>/observe``) to ``endpoint``; see ``LogUploader``."""
        uploader = LogUploader(log if log is not None else self.store.observe_dir, endpoint,
                               device_id=options.pop("device_id", self.device.device_id), **options)
        try:
            return uploader.upload()
        finally:
            uploader.close()

    # --- internals ------------------------------------------------------------------------

    def _updater(self) -> Updater:
        return Updater(
            metadata_dir=str(self._metadata_dir),
            metadata_base_url=f"{self.repo_url}/metadata/",
            target_base_url=f"{self.repo_url}/targets/",
            target_dir=str(self._downloads),
            fetcher=self.fetcher,
            config=self.config,
            bootstrap=None,
        )

    def _check(self, updater: Updater, model: str, channel: str) -> UpdateCheck:
        current = self.store.current(model)
        installed = current.version if current else None
        info = updater.get_targetinfo(release_target_path(channel, model))
        if info is None:
            return UpdateCheck(model, channel, None, installed,
                               Decision(False, f"no release of {model} on channel {channel!r}"))
        # Kept per channel and model; ngclient re-verifies the cached copy against the signed hashes and
        # only downloads when the record changed (a no-op check then costs no download).
        cached = self._downloads / "releases" / channel / f"{model}.json"
        cached.parent.mkdir(parents=True, exist_ok=True)
        path = updater.find_cached_target(info, str(cached)) or updater.download_target(info, str(cached))
        release = Release.from_json(Path(path).read_bytes())
        if release.model != model:
            raise UntrustedMetadataError(f"release record for {model} describes {release.model}", kind="WrongRelease")
        bad = {v for v in self.store.versions(model) if self.store.is_bad(model, v)}
        return UpdateCheck(model, channel, release, installed, decide(release, self.device, installed=installed,
                                                                      bad_versions=bad))

    def _fetch_archive(self, updater: Updater, release: Release) -> tuple[Path, int]:
        target = updater.get_targetinfo(release.archive)
        if target is None:
            raise UntrustedMetadataError(f"release {release.version} names {release.archive}, which the signed "
                                         "targets metadata does not list", kind="MissingTarget")
        return self._download(target, release.model, release.version)

    def _download(self, target: TargetFile, model: str, version: str) -> tuple[Path, int]:
        """Resumable download into downloads/, verified against the TUF-signed length and hashes."""
        digest = next(iter(target.hashes.values()))
        directory, _, name = target.path.rpartition("/")
        url = f"{self.repo_url}/targets/{directory}/{digest}.{name}" if directory else \
            f"{self.repo_url}/targets/{digest}.{name}"
        part = self._downloads / f"{model}-{version}-{digest[:16]}.tar.part"
        try:
            received = self.fetcher.download_resumable(url, part, length=target.length, hashes=dict(target.hashes),
                                                       progress=self.progress)
        except tuf_exc.LengthOrHashMismatchError as exc:
            raise ArtifactVerificationError(f"{target.path} does not match its signed length/hashes: {exc}") from exc
        return part, received


@contextlib.contextmanager
def _mapped_errors(repo_url: str) -> Iterator[None]:
    """python-tuf and httpx exceptions -> the SyncError leaf a caller can act on."""
    try:
        yield
    except SyncError:
        raise
    except tuf_exc.SlowRetrievalError as exc:
        raise SlowRetrievalError(f"{repo_url}: {exc}") from exc
    except tuf_exc.DownloadHTTPError as exc:
        raise RepositoryUnreachableError(f"{repo_url}: {exc}", status_code=exc.status_code) from exc
    except tuf_exc.DownloadLengthMismatchError as exc:
        raise ArtifactVerificationError(f"{repo_url}: {exc}") from exc
    except tuf_exc.LengthOrHashMismatchError as exc:
        raise ArtifactVerificationError(f"{repo_url}: {exc}") from exc
    except tuf_exc.RepositoryError as exc:
        raise UntrustedMetadataError(f"{repo_url}: {type(exc).__name__}: {exc}", kind=type(exc).__name__) from exc
    except (tuf_exc.DownloadError, httpx.TransportError) as exc:
        cause = exc.__cause__ or exc
        raise RepositoryUnreachableError(f"{repo_url}: {type(cause).__name__}: {cause}") from exc
    except OSError as exc:  # local storage: disk full, file too large, read-only, permissions
        raise SyncError(f"cannot write the update to local storage: {exc}",
                        hint="Free disk space on the device (or fix the store's permissions) and retry; "
                             "the installed model keeps serving.") from exc
