"""Bundle archives: one deterministic tar per bundle, unpacked defensively.

One file per release keeps TUF's job simple (one length, one hash) and makes resumable
downloads straightforward. Unpacking refuses anything a bundle never contains (absolute paths,
``..``, links, devices) and stops at a size cap, so a malicious archive that somehow passed
verification still cannot write outside the staging directory or fill the disk.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from edgewise.errors import SyncError


def pack_bundle(bundle_dir: Path, dest: Path) -> Path:
    """Tar ``bundle_dir``'s files (sorted, mtime 0, no owners): same bundle, same bytes, same hash."""
    files = sorted(p for p in bundle_dir.rglob("*") if p.is_file())
    if not (bundle_dir / "manifest.json").is_file():
        raise SyncError(f"{bundle_dir} is not a bundle (no manifest.json)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            info = tarfile.TarInfo(path.relative_to(bundle_dir).as_posix())
            info.size = path.stat().st_size
            info.mode = 0o644
            info.mtime = 0
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    return dest


def unpack_bundle(archive: Path, dest: Path, *, max_bytes: int) -> Path:
    """Extract regular files only into the empty directory ``dest``; SyncError on anything else."""
    dest.mkdir(parents=True, exist_ok=False)
    total = 0
    try:
        with tarfile.open(archive, "r:") as tar:
            for member in tar:
                name = Path(member.name)
                if not member.isfile() or name.is_absolute() or ".." in name.parts:
                    raise SyncError(f"bundle archive entry {member.name!r} is not a plain relative file")
                total += member.size
                if total > max_bytes:
                    raise SyncError(f"bundle archive unpacks to more than {max_bytes} bytes")
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with open(target, "wb") as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SyncError(f"cannot unpack bundle archive {archive.name}: {exc}") from exc
    return dest

