"""Records parked until the Histograms.json revision they need can be fetched.

When the Histograms.json server is down, slow or answers garbage, only the
records that need a revision the cache does not hold wait; the rest of
their spool file is published at once.  Layout under ``<data_dir>``::

    work/<spool file>.d/pending/<key>.spool   parked while the file is processed
    work/<spool file>.d/pending/<key>.json    the revision (and the info fields to resolve it)
    pending/<key>/revision.json               moved here once the file is published
    pending/<key>/<spool file>.spool          the parked records, original framing and bytes
    pending/<key>/state.json                  tries so far and when the next one is due

``<key>`` names the revision (``<repo path with _>-<changeset[:12]>-<hash>``,
or ``build-<hash>`` for pings resolved by channel and build id).  A parked
file is written during processing inside the work directory, so a crash
before the spool file is committed leaves nothing behind; it is moved into
``pending/`` by the processor's last phase (idempotent after a crash).

:meth:`PendingArea.release_due` tries each revision on its schedule
(``process.pending_retry_s``, doubling up to ``process.pending_max_retry_s``);
once the revision resolves (or fails for good, e.g. a 404, which then
quarantines the records), its spool files move into ``spool/finished/``
under new names and are processed like any other input.  Parked records
never reached the dedup stage, so processing them later decides them for
the first time.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ...atomic_files import fsync_directory, write_json_atomically
from ..spool.files import FINISHED_DIR_NAME, SpoolFileName
from ..spool.framing import encode_record_parts

log = logging.getLogger(__name__)

PENDING_DIR = "pending"
REVISION_FILE = "revision.json"
STATE_FILE = "state.json"
#: ``info`` fields kept to resolve a ping without ``info.revision`` (by channel and build).
_INFO_FIELDS = ("appUpdateChannel", "appVersion", "appBuildID", "platformBuildID", "appName")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def pending_key(revision: str | None, info: dict[str, Any]) -> str:
    """A directory name for what a record waits for (safe, stable, unique per revision)."""
    if revision:
        digest = hashlib.blake2b(revision.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
        tail = revision.rstrip("/").split("/")
        changeset = _UNSAFE.sub("_", tail[-1])[:12] if tail else ""
        repo = _UNSAFE.sub("_", "_".join(tail[3:-2]))[:80] if len(tail) > 4 else "revision"
        return f"{repo}-{changeset}-{digest}".lstrip(".-") or digest
    wanted = json.dumps({name: info.get(name) for name in _INFO_FIELDS}, sort_keys=True, default=str)
    return f"build-{hashlib.blake2b(wanted.encode(), digest_size=8).hexdigest()}"


class ParkedWriter:
    """The parked records of one spool file being processed (inside its work directory)."""

    def __init__(self, work: Path) -> None:
        self.directory = work / PENDING_DIR
        self.records: dict[str, int] = {}
        self._handles: dict[str, Any] = {}

    def park(self, key: str, *, revision: str | None, info: dict[str, Any], path: str, body: bytes,
             timestamp_ms: int, client_addr: str | None) -> None:
        handle = self._handles.get(key)
        if handle is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            described = {"revision": revision, "info": {name: info.get(name) for name in _INFO_FIELDS
                                                         if isinstance(info.get(name), (str, int, float))}}
            write_json_atomically(self.directory / f"{key}.json", described)
            handle = self._handles[key] = open(self.directory / f"{key}.spool", "ab")
        head, data = encode_record_parts(path, body, timestamp_ms=timestamp_ms, client_addr=client_addr)
        handle.write(head)
        handle.write(data)
        self.records[key] = self.records.get(key, 0) + 1

    def close(self) -> None:
        """Flush and fsync every parked file (before the spool file's processing is committed)."""
        for handle in self._handles.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        self._handles.clear()
        if self.records:
            fsync_directory(self.directory)

    def abort(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


@dataclass
class ReleaseSummary:
    """What one :meth:`PendingArea.release_due` pass did."""

    released_files: int = 0
    still_waiting: int = 0


class PendingArea:
    """``<data_dir>/pending/``: moving parked files in, and releasing them when their revision resolves."""

    def __init__(self, data_dir: Path, node_id: str, *, retry_s: float, max_retry_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = Path(data_dir) / PENDING_DIR
        self.spool_finished = Path(data_dir) / "spool" / FINISHED_DIR_NAME
        self.node_id = node_id
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.clock = clock
        self._sequence = 0

    def adopt(self, work: Path, source_name: str) -> None:
        """Move the parked files of a published spool file's work directory into
        ``pending/<key>/<source_name>`` (again after a crash: what moved stays)."""
        parked = work / PENDING_DIR
        if not parked.is_dir():
            return
        for spool in sorted(parked.glob("*.spool")):
            key = spool.name[:-len(".spool")]
            target_dir = self.root / key
            target_dir.mkdir(parents=True, exist_ok=True)
            if not (target_dir / REVISION_FILE).exists():
                os.replace(parked / f"{key}.json", target_dir / REVISION_FILE)
            if not (target_dir / STATE_FILE).exists():  # the first try is process.pending_retry_s away
                write_json_atomically(target_dir / STATE_FILE,
                                      {"attempts": 0, "next_attempt_at": self.clock() + self.retry_s})
            os.replace(spool, target_dir / source_name)
            fsync_directory(target_dir)
            log.info("parked %s record file %s in %s until its Histograms.json revision can be fetched",
                     source_name, spool.name, target_dir)

    def keys(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def files(self, key: str) -> list[Path]:
        return sorted(p for p in (self.root / key).iterdir()
                      if p.is_file() and p.name not in (REVISION_FILE, STATE_FILE) and not p.name.startswith("."))

    def describe(self, key: str) -> dict[str, Any]:
        """The revision (and info fields) ``key`` waits for."""
        try:
            return json.loads((self.root / key / REVISION_FILE).read_text())
        except (OSError, ValueError):
            return {"revision": None, "info": {}}

    def release_due(self, probe: Callable[[str | None, dict[str, Any]], bool], *,
                    force: bool = False) -> ReleaseSummary:
        """Try every revision whose time has come (all with ``force``).

        ``probe(revision, info)`` returns True once the revision resolves or
        fails for good (the records then go through the pipeline again) and
        False while it still cannot be fetched.  Released files move into
        ``spool/finished/``; the schedule of the others backs off.
        """
        summary = ReleaseSummary()
        if not self.root.is_dir():
            return summary
        with self._lock():
            for key in self.keys():
                files = self.files(key)
                if not files:
                    self._remove_if_empty(key)
                    continue
                state = self._state(key)
                if not force and state.get("next_attempt_at", 0.0) > self.clock():
                    summary.still_waiting += len(files)
                    continue
                described = self.describe(key)
                if not probe(described.get("revision"), described.get("info") or {}):
                    tries = int(state.get("attempts", 0)) + 1
                    delay = min(self.max_retry_s, self.retry_s * 2 ** (tries - 1))
                    write_json_atomically(self.root / key / STATE_FILE,
                                          {"attempts": tries, "next_attempt_at": self.clock() + delay})
                    summary.still_waiting += len(files)
                    continue
                for parked in files:
                    self._release(parked)
                    summary.released_files += 1
                self._remove_if_empty(key)
                log.info("released %d parked file(s) of %s: its Histograms.json revision is available",
                         len(files), described.get("revision") or key)
        return summary

    def parked_records(self) -> Iterator[tuple[str, Path]]:
        """``(key, file)`` of every parked file (for reconcile and status)."""
        for key in self.keys():
            for parked in self.files(key):
                yield key, parked

    def _release(self, parked: Path) -> None:
        self.spool_finished.mkdir(parents=True, exist_ok=True)
        while True:
            self._sequence += 1
            name = SpoolFileName(started_ms=int(self.clock() * 1000), node_id=self.node_id, pid=os.getpid(),
                                 sequence=self._sequence)
            target = self.spool_finished / str(name)
            if not target.exists():
                break
        os.rename(parked, target)
        fsync_directory(self.spool_finished)

    def _remove_if_empty(self, key: str) -> None:
        directory = self.root / key
        if self.files(key):
            return
        for name in (STATE_FILE, REVISION_FILE):
            (directory / name).unlink(missing_ok=True)
        try:
            directory.rmdir()
        except OSError as exc:  # something arrived meanwhile: it is looked at next time
            log.debug("kept %s: %s", directory, exc)

    def _state(self, key: str) -> dict[str, Any]:
        try:
            state = json.loads((self.root / key / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _lock(self) -> Any:
        return _FileLock(self.root / ".release.lock")


class _FileLock:
    """An exclusive ``flock`` while the ``with`` block runs (one releaser per node)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: Any = None

    def __enter__(self) -> "_FileLock":
        self._handle = open(self.path, "a")
        fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._handle.close()
