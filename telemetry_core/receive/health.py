"""Whether an edge worker can take submissions: the spool is writable and the disk not full.

:class:`SpoolHealth` is refreshed about once a second by the worker's timer
(a ``statvfs`` and an ``access`` call, never per request).  Submissions are
refused with 503 + Retry-After while :meth:`SpoolHealth.refusal` says so, so
a full disk never turns into acknowledged-then-lost data; a failed append
marks the spool unwritable for ``/__heartbeat__`` until an append succeeds
again (submissions keep trying, so the worker notices when space is back).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..records import Rejection

__all__ = ["SpoolHealth"]


class SpoolHealth:
    """The spool directory's health, as the last :meth:`refresh` and appends saw it.

    ``directory`` is ``None`` for a spool writer that has no local directory
    (a plugin's); then only append failures are watched.
    """

    def __init__(self, directory: Path | None, min_free_disk_bytes: int) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.min_free_disk_bytes = min_free_disk_bytes
        self.free_bytes: int | None = None
        self.writable = True
        self.last_write_error: str | None = None
        self.refresh()

    def refresh(self) -> None:
        """Look at the disk again: free space, and whether the directory is still writable."""
        if self.directory is None:
            return
        try:
            stat = os.statvfs(self.directory)
        except OSError:
            self.free_bytes, self.writable = None, False
            return
        self.free_bytes = stat.f_bavail * stat.f_frsize
        self.writable = self.directory.is_dir() and os.access(self.directory, os.W_OK | os.X_OK)

    def write_failed(self, message: str) -> None:
        self.last_write_error = message

    def write_succeeded(self) -> None:
        self.last_write_error = None

    @property
    def disk_full(self) -> bool:
        return self.free_bytes is not None and self.free_bytes < self.min_free_disk_bytes

    def refusal(self) -> Rejection | None:
        """A 503 rejection when submissions cannot be spooled now, else ``None``."""
        if not self.writable:
            return Rejection(503, "spool_unwritable", f"the spool directory {self.directory} is missing or "
                                                      "not writable; retry later")
        if self.disk_full:
            return Rejection(503, "disk_full", "the spool's disk is nearly full; retry later")
        return None

    def checks(self) -> dict[str, Any]:
        """The ``/__heartbeat__`` checks: each ``ok`` plus what was seen."""
        return {
            "spool_writable": {"ok": self.writable and self.last_write_error is None,
                               "directory": str(self.directory) if self.directory else None,
                               "last_write_error": self.last_write_error},
            "disk_free": {"ok": not self.disk_full and (self.free_bytes is not None or self.directory is None),
                          "free_bytes": self.free_bytes, "min_free_bytes": self.min_free_disk_bytes},
        }
