"""Durable small-file writes: a temporary file in the same directory, fsync,
rename over the target, fsync the directory.  Readers see the old file or
the new one, never a partial one, and a crash loses neither.

One file mode and one error policy for every file written this way:

* files are created with mode :data:`FILE_MODE` (``0644``), like every other
  file telemetry-core creates (spool files, the dedup ledger, the node id):
  other users (a job runner, an operator, a cache shared between services)
  may read them; ``tempfile.mkstemp``'s ``0600`` is not kept;
* errors propagate, including from fsyncing the directory: a caller that
  needs the file durable must hear that it is not, and a caller for which the
  file is only an optimisation (the revision cache) catches ``OSError`` itself.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

#: Mode of every file written by this module (and of the other files telemetry-core creates).
FILE_MODE = 0o644


def fsync_directory(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable; ``OSError`` propagates."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def temporary_file(directory: Path, name: str) -> Iterator[tuple[IO[bytes], Path]]:
    """A new, empty file ``.<name>.<random>.tmp`` in ``directory`` with mode :data:`FILE_MODE`,
    open for binary writing; removed on the way out unless it was renamed away."""
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            yield handle, Path(temporary)
    finally:
        Path(temporary).unlink(missing_ok=True)


def write_bytes_atomically(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (creating missing parent directories).

    With ``durable`` (the default) the file and the directory are fsynced, so
    the new content survives a crash; without it (metrics a later write
    replaces anyway) readers still never see a partial file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with temporary_file(path.parent, path.name) as (handle, temporary):
        handle.write(data)
        handle.flush()
        if durable:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    if durable:
        fsync_directory(path.parent)


def write_json_atomically(path: Path, document: Any, *, durable: bool = True) -> None:
    """Replace ``path`` with ``document`` as JSON (sorted keys); see :func:`write_bytes_atomically`."""
    write_bytes_atomically(path, json.dumps(document, sort_keys=True).encode("utf-8"), durable=durable)
