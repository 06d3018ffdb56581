"""Built-in plugin: the local archive, ``<data_dir>/archive/``, as a publisher.

The default publish target (``store.publish.backend: local``).  A published
file's key is its path relative to the archive root, exactly as it would be
in S3.  Publishing copies into a temporary file beside the target, fsyncs,
verifies the SHA-256 of what was written, and links it into place without
ever replacing an existing file (``os.link`` fails if the key exists), then
fsyncs the directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterator

from ..atomic_files import fsync_directory, temporary_file
from ..hookspecs import hookimpl
from ..interfaces import PublishConflict, PublishedFile, PublishError, StoredObject

CHUNK = 1 << 20


def sha256_of(path: str | Path) -> str:
    """``"sha256:<hex>"`` of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def check_key(key: str) -> str:
    """Refuse keys that could name a path outside the archive root."""
    parts = PurePosixPath(key).parts
    if (not key or key.startswith("/") or "\\" in key or "\0" in key
            or any(part in ("", ".", "..") for part in parts) or key.endswith("/")):
        raise PublishError(f"refusing to publish to unsafe key {key!r}")
    return key


class LocalArchive:
    """A directory tree holding published files under their keys."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = root.resolve().as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def publish(self, local_path: str, key: str, *, checksum: str) -> PublishedFile:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            return self._existing(target, key, checksum)
        with temporary_file(target.parent, target.name) as (out, temporary), open(local_path, "rb") as source:
            shutil.copyfileobj(source, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
            written = sha256_of(temporary)
            if written != checksum:
                raise PublishError(f"checksum mismatch publishing {key}: source {checksum}, written {written}")
            try:
                os.link(temporary, target)  # never replaces: a key is written once
            except FileExistsError:
                return self._existing(target, key, checksum)
        fsync_directory(target.parent)
        return PublishedFile(key=key, size=target.stat().st_size, checksum=checksum, url=target.as_uri())

    def _existing(self, target: Path, key: str, checksum: str) -> PublishedFile:
        found = sha256_of(target)
        if found != checksum:
            raise PublishConflict(f"{key} already exists in the archive with different content "
                                  f"({found}, publishing {checksum}); nothing was overwritten")
        return PublishedFile(key=key, size=target.stat().st_size, checksum=checksum, url=target.as_uri())

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def open(self, key: str) -> IO[bytes]:
        return open(self._path(key), "rb")

    def list(self, prefix: str) -> Iterator[StoredObject]:
        base = self.root / prefix if prefix.endswith("/") or not prefix else (self.root / prefix).parent
        if not base.is_dir():
            return
        for directory, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith("."):
                    continue  # temporary files of a publish in progress
                path = Path(directory) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    info = path.stat()
                    yield StoredObject(key, info.st_size, info.st_mtime)

    def list_dirs(self, prefix: str) -> Iterator[str]:
        base = self.root / prefix
        if not base.is_dir():
            return
        for entry in sorted(base.iterdir()):
            if entry.is_dir():
                yield f"{prefix}{entry.name}/"


@hookimpl
def telemetry_config_choices(key: str) -> list[str] | None:
    return ["local"] if key == "store.publish.backend" else None


@hookimpl(trylast=True)
def telemetry_store_publisher(engine: Any) -> LocalArchive | None:
    if engine.config.get("store.publish.backend") != "local":
        return None
    return LocalArchive(engine.config.data_dir / "archive")
