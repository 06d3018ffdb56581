"""The processor's work files for one spool file (the ``StoreBatch`` stores write to).

Files live under ``<work dir>/store/<relative path>``; at most
``max_open`` are open at once (least recently used are closed and reopened
in append mode), so a spool file touching thousands of partitions does not
exhaust file descriptors.  ``close()`` flushes and fsyncs everything;
nothing here is visible to readers until the processor publishes.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

from ...errors import RecordError
from ..local import check_key
from ...interfaces import PublishError


class WorkBatch:
    """Append-only work files; ``records`` counts records per relative path.

    ``touched`` collects the paths appended to since the caller last cleared
    it (the processor checks that each record landed in exactly one file).
    """

    def __init__(self, root: Path, node_id: str, seq: int, max_open: int = 64) -> None:
        self.root = root
        self.node_id = node_id
        self.seq = seq
        self.max_open = max_open
        self.records: dict[str, int] = {}
        self.touched: set[str] = set()
        self._open: OrderedDict[str, BinaryIO] = OrderedDict()

    @staticmethod
    def check_path(relative_path: str) -> str:
        """``relative_path`` when it stays inside the batch; else ``RecordError("write_failed")``."""
        try:
            _safe_path(relative_path)
        except PublishError:
            raise RecordError("write_failed", f"a store plugin chose the unsafe path {relative_path!r}") from None
        return relative_path

    def append(self, relative_path: str, data: bytes, records: int = 1) -> None:
        self.check_path(relative_path)
        handle = self._open.get(relative_path)
        if handle is None:
            path = self.root / relative_path
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "ab")
            self._open[relative_path] = handle
            if len(self._open) > self.max_open:
                _, oldest = self._open.popitem(last=False)
                oldest.close()
        else:
            self._open.move_to_end(relative_path)
        handle.write(data)
        self.records[relative_path] = self.records.get(relative_path, 0) + records
        self.touched.add(relative_path)

    def close(self) -> None:
        """Close every file, then fsync each one written (durable before publishing)."""
        for handle in self._open.values():
            handle.close()
        self._open.clear()
        for relative_path in self.records:
            fd = os.open(self.root / relative_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def abort(self) -> None:
        for handle in self._open.values():
            handle.close()
        self._open.clear()


@functools.lru_cache(maxsize=4096)
def _safe_path(relative_path: str) -> str:
    """:func:`~telemetry_core.store.local.check_key`, remembered for the paths that pass
    (every record of a partition names the same one; an unsafe path is checked each time)."""
    return check_key(relative_path)
