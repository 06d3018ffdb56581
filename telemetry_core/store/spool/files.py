"""The raw spool: durable, node-unique, append-only files of framed submissions.

The HTTP edge appends every accepted submission with :class:`SpoolWriter`
*before* it acknowledges it; the processor reads finished files with
:class:`SpoolReader`.  Layout under ``spool_dir``::

    open/      files being appended to, one per writing process at a time
    finished/  complete files, moved here by an atomic rename; the processor's input

File names are ``<node_id>.<pid>.<started_ms>.<sequence>.spool`` (see
:class:`SpoolFileName`): unique per node without looking at what exists.
A writer holds an exclusive ``flock`` on its open file, so
:func:`finish_orphans` can tell a live writer from a dead one.  The record
framing is in :mod:`telemetry_core.store.spool.framing`; ``docs/spool-format.md``
describes both, with the guarantees of each :class:`FsyncPolicy`.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import itertools
import logging
import mmap
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from telemetry_core.atomic_files import fsync_directory
from telemetry_core.store.spool.framing import (
    DEFAULT_LIMITS,
    ReadStats,
    RecordFormat,
    SkipReason,
    SpoolConfigError,
    SpoolError,
    SpoolLimits,
    SpoolRecord,
    SpoolRecordError,
    decode_records,
    encode_record_parts,
)

__all__ = [
    "DEFAULT_FSYNC_INTERVAL_MS", "DEFAULT_MAX_FILE_AGE_S", "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_STALE_AFTER_S", "FINISHED_DIR_NAME", "OPEN_DIR_NAME", "SPOOL_FILE_SUFFIX",
    "FsyncPolicy", "ReadStats", "RecordFormat", "SkipReason", "SpoolConfigError", "SpoolError",
    "SpoolFileName", "SpoolLimits", "SpoolReader", "SpoolRecord", "SpoolRecordError",
    "SpoolWriteError", "SpoolWriter", "SpoolWriterStats", "finish_orphans",
    "list_finished_files", "validate_node_id",
]

log = logging.getLogger(__name__)

OPEN_DIR_NAME = "open"
FINISHED_DIR_NAME = "finished"
SPOOL_FILE_SUFFIX = ".spool"
DEFAULT_MAX_FILE_BYTES = 128 * 1024 * 1024
DEFAULT_MAX_FILE_AGE_S = 300.0
DEFAULT_FSYNC_INTERVAL_MS = 1000
DEFAULT_STALE_AFTER_S = 900.0

_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_FILE_NAME = re.compile(r"(?P<node_id>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})\.(?P<pid>[0-9]{1,10})"
                        r"\.(?P<started_ms>[0-9]{1,20})\.(?P<sequence>[0-9]{1,20})"
                        + re.escape(SPOOL_FILE_SUFFIX))
#: Process-wide file sequence: two writers in one process never build the same name.
_FILE_SEQUENCE = itertools.count()
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
#: Records per ``writev`` (two buffers each; Linux takes at most 1024 buffers per call).
_RECORDS_PER_WRITE = 256


class SpoolWriteError(SpoolError):
    """The operating system refused a spool write (disk full, permissions, I/O error).

    The record was not appended; the edge should answer 503 and let the client retry.
    """


class FsyncPolicy(enum.StrEnum):
    """When a :class:`SpoolWriter` forces data to stable storage.

    * ``none``: never; the kernel writes back when it likes.  An appended
      record survives a crash of the process, not of the machine.
    * ``interval``: at most every ``fsync_interval_ms`` (checked on append
      and on :meth:`SpoolWriter.poll`), and before a file is finished.  A
      machine crash loses at most the records of the last interval (plus
      the poll period when idle); finished files are complete on disk.
    * ``always``: before :meth:`SpoolWriter.append` (or
      :meth:`~SpoolWriter.append_many`) returns.  An acknowledged record
      survives a machine crash (as far as the disk honours flushes); one
      sync per write, so appends are much slower unless batched.
    """

    NONE = "none"
    INTERVAL = "interval"
    ALWAYS = "always"


def validate_node_id(node_id: str) -> str:
    """Return ``node_id`` if it is safe inside a file name, else raise :class:`SpoolConfigError`.

    Allowed: 1 to 64 characters from ``A-Z a-z 0-9 _ . -``, starting with a
    letter or digit, so no ``/``, ``..`` component, NUL or empty name can
    place a file outside the spool directory.
    """
    if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id):
        raise SpoolConfigError(f"node id {node_id!r} is not usable in spool file names; use 1-64 "
                               "characters from A-Z a-z 0-9 _ . - starting with a letter or digit")
    return node_id


@dataclass(frozen=True, slots=True, order=True)
class SpoolFileName:
    """The parts of a spool file name; ``str()`` gives the name itself.

    Ordering is by start time, then pid and sequence, i.e. roughly the order
    in which the files were opened on a node.
    """

    started_ms: int
    node_id: str
    pid: int
    sequence: int

    def __str__(self) -> str:
        return f"{self.node_id}.{self.pid}.{self.started_ms}.{self.sequence}{SPOOL_FILE_SUFFIX}"

    @classmethod
    def parse(cls, name: str) -> SpoolFileName | None:
        """Split a file name made by :class:`SpoolWriter`; ``None`` for any other name."""
        match = _FILE_NAME.fullmatch(name)
        if match is None:
            return None
        return cls(started_ms=int(match["started_ms"]), node_id=match["node_id"],
                   pid=int(match["pid"]), sequence=int(match["sequence"]))


@dataclass(slots=True)
class SpoolWriterStats:
    """Counters of one :class:`SpoolWriter` (for metrics and tests)."""

    records: int = 0
    bytes: int = 0
    files_opened: int = 0
    files_finished: int = 0
    file_syncs: int = 0
    directory_syncs: int = 0
    write_errors: int = 0


@dataclass(slots=True)
class _OpenSpoolFile:
    """The file a writer is appending to, and what it needs to rotate and sync it."""

    fd: int
    name: str
    path: Path
    opened_at: float
    last_sync_at: float
    size: int = 0
    dirty: bool = False


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class SpoolWriter:
    """Appends framed records to node-unique files under ``<spool_dir>/open/``.

    A file is created on the first append after construction or rotation,
    and *finished* (synced per policy, atomically renamed into
    ``<spool_dir>/finished/``) when the next record would take it past
    ``max_file_bytes``, when it is ``max_file_age_s`` old at an append or a
    :meth:`poll`, on :meth:`rotate` and on :meth:`close`.  Call :meth:`poll`
    from a timer (about once a second) so an idle file is still synced and
    finished on time.

    Not thread-safe, and not to be shared across ``fork``: one writer per
    process (an asyncio edge calls it from its event loop).  Appending is one
    ``write`` of a pre-built record; with ``fsync="always"`` it also blocks
    on a data sync.
    """

    def __init__(self, spool_dir: str | os.PathLike[str], node_id: str, *,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 max_file_age_s: float = DEFAULT_MAX_FILE_AGE_S,
                 fsync: FsyncPolicy | str = FsyncPolicy.INTERVAL,
                 fsync_interval_ms: int = DEFAULT_FSYNC_INTERVAL_MS,
                 limits: SpoolLimits = DEFAULT_LIMITS,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall_clock_ms: Callable[[], int] = _wall_clock_ms) -> None:
        self.node_id = validate_node_id(node_id)
        self.fsync = _parse_fsync_policy(fsync)
        if not isinstance(max_file_bytes, int) or max_file_bytes <= 0:
            raise SpoolConfigError(f"max_file_bytes={max_file_bytes!r} must be a positive integer")
        if not max_file_age_s > 0:
            raise SpoolConfigError(f"max_file_age_s={max_file_age_s!r} must be a positive number of seconds")
        if not isinstance(fsync_interval_ms, int) or fsync_interval_ms < 0:
            raise SpoolConfigError(f"fsync_interval_ms={fsync_interval_ms!r} must be an integer >= 0")
        self.spool_dir = Path(spool_dir)
        self.open_dir = self.spool_dir / OPEN_DIR_NAME
        self.finished_dir = self.spool_dir / FINISHED_DIR_NAME
        self.max_file_bytes = max_file_bytes
        self.max_file_age_s = float(max_file_age_s)
        self.fsync_interval_s = fsync_interval_ms / 1000.0
        self.limits = limits
        self.stats = SpoolWriterStats()
        self._monotonic = monotonic
        self._wall_clock_ms = wall_clock_ms
        self._file: _OpenSpoolFile | None = None
        self._closed = False
        for directory in (self.open_dir, self.finished_dir):
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise SpoolWriteError(f"cannot create spool directory {directory}: {error.strerror}; "
                                      "point spool_dir at a writable directory") from error

    # -- public API

    @property
    def current_path(self) -> Path | None:
        """The file in ``open/`` being appended to, or ``None`` between files."""
        return self._file.path if self._file is not None else None

    def append(self, path: str, body: bytes | bytearray | memoryview, *,
               client_addr: str | None = None, timestamp_ms: int | None = None) -> int:
        """Append one submission; return the framed record's size in bytes.

        ``timestamp_ms`` defaults to now.  When this returns, the record is
        in the kernel (and on disk with ``fsync="always"``).  Raises
        :class:`SpoolRecordError` when the submission is over the limits
        (nothing written) and :class:`SpoolWriteError` when the OS refuses
        the write (nothing appended: a partial write is truncated away).
        """
        (outcome,) = self.append_many([(path, body, client_addr, timestamp_ms)])
        if isinstance(outcome, SpoolError):
            raise outcome
        return outcome

    def append_many(self, submissions: Sequence[tuple[str, bytes | bytearray | memoryview, str | None, int | None]],
                    ) -> list[int | SpoolError]:
        """Append several submissions, each ``(path, body, client_addr, timestamp_ms)``, with
        one gathered write per file (and, with ``fsync="always"``, one sync: a group commit).

        Returns one result per submission, in order: the framed record's size
        once it is written as the fsync policy promises, or the
        :class:`SpoolError` that refused it.  Records go to the file in the
        order given; rotation by size and age applies as with :meth:`append`.
        A submission over the limits fails alone (:class:`SpoolRecordError`).
        When the OS refuses a write, finishing or opening a file, that
        record and every later one fail with the :class:`SpoolError`, and
        nothing of a refused write stays in the file; when a sync fails,
        the records of that write fail too although they are in the file,
        as with :meth:`append` (the client retries; dedup drops the copy).
        """
        if self._closed:
            raise SpoolError("append on a closed SpoolWriter; create a new writer")
        results: list[int | SpoolError] = [0] * len(submissions)
        group: list[tuple[int, bytes, bytes | bytearray | memoryview]] = []  # (index, head, body), not written yet
        group_bytes = 0
        failure: SpoolError | None = None
        now = self._monotonic()
        for index, (path, body, client_addr, timestamp_ms) in enumerate(submissions):
            if failure is not None:
                results[index] = failure
                continue
            try:
                head, body = encode_record_parts(path, body, client_addr=client_addr, limits=self.limits,
                                                 timestamp_ms=self._wall_clock_ms() if timestamp_ms is None
                                                 else timestamp_ms)
            except SpoolRecordError as error:
                results[index] = error
                continue
            size = len(head) + len(body)
            try:
                current = self._file
                pending = current.size + group_bytes if current is not None else 0
                rotate = current is not None and (now - current.opened_at >= self.max_file_age_s
                                                  or (pending and pending + size > self.max_file_bytes))
                if group and (rotate or len(group) == _RECORDS_PER_WRITE):
                    failure = self._write_group(current, group, results, now)
                    group, group_bytes = [], 0
                if failure is None and rotate:
                    self._finish_current()
                if failure is None and self._file is None:
                    self._open_new_file(now)
            except SpoolError as error:  # finishing or opening a file failed
                failure = error
            if failure is not None:
                results[index] = failure
                continue
            group.append((index, head, body))
            group_bytes += size
        if group and failure is None:
            self._write_group(self._file, group, results, now)
        return results

    def _write_group(self, current: _OpenSpoolFile, group: list[tuple[int, bytes, bytes | bytearray | memoryview]],
                     results: list[int | SpoolError], now: float) -> SpoolError | None:
        """Write ``group`` to ``current`` with ``writev`` and sync per policy; fill ``results``.
        Returns the error that failed the whole group, if one did."""
        # One record: one plain write of head + body, as append() always did.
        buffers = [group[0][1] + group[0][2]] if len(group) == 1 else \
            [part for _, head, body in group for part in (head, body)]
        try:
            self._write(current, buffers, records=len(group))
            if self.fsync is FsyncPolicy.ALWAYS or (
                    self.fsync is FsyncPolicy.INTERVAL and now - current.last_sync_at >= self.fsync_interval_s):
                self._sync(current, now)
        except SpoolWriteError as error:
            for index, _, _ in group:
                results[index] = error
            return error
        for index, head, body in group:
            results[index] = len(head) + len(body)
        return None

    def poll(self) -> Path | None:
        """Do what is due while idle: finish a file past its age, or sync per the interval.

        Returns the finished file's path when one was finished.
        """
        current = self._file
        if current is None:
            return None
        now = self._monotonic()
        if now - current.opened_at >= self.max_file_age_s:
            return self._finish_current()
        if self.fsync is FsyncPolicy.INTERVAL and current.dirty and \
                now - current.last_sync_at >= self.fsync_interval_s:
            self._sync(current, now)
        return None

    def rotate(self) -> Path | None:
        """Finish the current file now (if any); the next append opens a new one."""
        return self._finish_current() if self._file is not None else None

    def close(self) -> Path | None:
        """Finish the current file and refuse further appends; safe to call twice."""
        self._closed = True
        return self.rotate()

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- files

    def _open_new_file(self, now: float) -> _OpenSpoolFile:
        """Create and lock a new, never-used file name in ``open/``."""
        for _ in range(100):
            name = str(SpoolFileName(started_ms=self._wall_clock_ms(), node_id=self.node_id,
                                     pid=os.getpid(), sequence=next(_FILE_SEQUENCE)))
            path = self.open_dir / name
            if (self.finished_dir / name).exists():
                continue
            try:
                fd = os.open(path, _OPEN_FLAGS, 0o644)
            except FileExistsError:
                continue
            except OSError as error:
                raise SpoolWriteError(f"cannot create spool file {path}: {error.strerror}; "
                                      "check that the spool directory is writable") from error
            if not _lock_new_file(fd, path):
                continue
            if self.fsync is not FsyncPolicy.NONE:
                self._sync_directory(self.open_dir)
            self.stats.files_opened += 1
            self._file = _OpenSpoolFile(fd=fd, name=name, path=path, opened_at=now, last_sync_at=now)
            return self._file
        raise SpoolError(f"could not find an unused spool file name in {self.open_dir} after 100 "
                         "tries; check the clock and for another writer using this node id")

    def _write(self, current: _OpenSpoolFile, buffers: list[bytes | bytearray | memoryview], *,
               records: int) -> None:
        """Append ``buffers`` (the framed bytes of ``records`` records) with one ``write`` or
        ``writev``; more calls only if the kernel writes part of it."""
        total = sum(len(buffer) for buffer in buffers)
        try:
            written = os.writev(current.fd, buffers) if len(buffers) > 1 else os.write(current.fd, buffers[0])
            if written < total:  # rare: a short write (signal, full disk)
                data = memoryview(b"".join(buffers))
                while written < total:
                    written += os.write(current.fd, data[written:])
        except OSError as error:
            self.stats.write_errors += 1
            self._drop_partial_write(current)
            raise SpoolWriteError(f"cannot append to spool file {current.path}: {error.strerror}; "
                                  "free disk space or fix permissions, then retry") from error
        current.size += total
        current.dirty = True
        self.stats.records += records
        self.stats.bytes += total

    def _drop_partial_write(self, current: _OpenSpoolFile) -> None:
        """Cut the file back to its last whole record; if that fails, finish the file as it is."""
        try:
            os.ftruncate(current.fd, current.size)
        except OSError as error:
            log.warning("cannot truncate %s after a failed write (%s); finishing it, the reader "
                        "will skip the torn record", current.path, error.strerror)
            self._finish_current()

    def _finish_current(self) -> Path:
        """Sync per policy, rename ``open/<name>`` to ``finished/<name>``, close; return the new path."""
        current = self._file
        assert current is not None
        self._file = None
        target = self.finished_dir / current.name
        try:
            if self.fsync is not FsyncPolicy.NONE and current.dirty:
                self._sync(current, self._monotonic())
            _rename_no_clobber(current.path, target)
            if self.fsync is not FsyncPolicy.NONE:
                self._sync_directory(self.finished_dir)
        finally:
            os.close(current.fd)  # releases the lock only once the file is in finished/
        self.stats.files_finished += 1
        return target

    def _sync(self, current: _OpenSpoolFile, now: float) -> None:
        try:
            _sync_file(current.fd)
        except OSError as error:
            raise SpoolWriteError(f"cannot sync spool file {current.path}: {error.strerror}; "
                                  "the disk may be failing or full") from error
        current.dirty = False
        current.last_sync_at = now
        self.stats.file_syncs += 1

    def _sync_directory(self, directory: Path) -> None:
        fsync_directory(directory)
        self.stats.directory_syncs += 1


def _parse_fsync_policy(value: FsyncPolicy | str) -> FsyncPolicy:
    try:
        return FsyncPolicy(value)
    except ValueError:
        choices = ", ".join(policy.value for policy in FsyncPolicy)
        raise SpoolConfigError(f"fsync policy {value!r} is unknown; use one of {choices}") from None


def _lock_new_file(fd: int, path: Path) -> bool:
    """Take the writer's lock on a just-created file; False if it was taken away meanwhile.

    :func:`finish_orphans` may lock a file for a moment between its creation
    and this call; the lock is then awaited, and the file given up if the
    finisher moved it.
    """
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        still_ours = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        still_ours = False
    if not still_ours:
        os.close(fd)
    return still_ours


def _rename_no_clobber(source: Path, target: Path) -> None:
    """Atomically rename ``source`` to ``target``, refusing to replace an existing file."""
    if target.exists():
        raise SpoolError(f"refusing to replace existing finished spool file {target}; "
                         f"{source} was left in place, check for two writers sharing a node id and pid")
    os.rename(source, target)


def _sync_file(fd: int) -> None:
    """Force a file's data (and size) to stable storage."""
    (os.fdatasync if hasattr(os, "fdatasync") else os.fsync)(fd)


# ---------------------------------------------------------------- reading


class SpoolReader:
    """Iterates the records of one spool file: ours or the original node.js framings.

    Each iteration reads the file from the start and replaces :attr:`stats`
    with the counts of that pass: records returned (by format) and spans
    skipped (by :class:`SkipReason`).  Check ``reader.stats.damaged`` after
    iterating; a lone trailing newline is counted but is not damage.  The
    file is memory-mapped, never read whole into memory.
    """

    def __init__(self, path: str | os.PathLike[str], *, limits: SpoolLimits = DEFAULT_LIMITS,
                 read_legacy: bool = True) -> None:
        self.path = Path(path)
        self.limits = limits
        self.read_legacy = read_legacy
        self.stats = ReadStats()

    def __iter__(self) -> Iterator[SpoolRecord]:
        self.stats = stats = ReadStats()
        with open(self.path, "rb") as file:
            if os.fstat(file.fileno()).st_size == 0:
                return
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                yield from decode_records(buf, limits=self.limits, read_legacy=self.read_legacy,
                                          stats=stats)

    def read_all(self) -> list[SpoolRecord]:
        """All intact records of the file as a list (stats as for iteration)."""
        return list(self)


def list_finished_files(spool_dir: str | os.PathLike[str]) -> list[Path]:
    """Finished spool files under ``spool_dir``, oldest first (by start time, pid, sequence).

    Files in ``finished/`` whose names were not made by a writer are left out.
    """
    finished_dir = Path(spool_dir) / FINISHED_DIR_NAME
    if not finished_dir.is_dir():
        return []
    named = [(parsed, entry) for entry in finished_dir.iterdir()
             if (parsed := SpoolFileName.parse(entry.name)) is not None and entry.is_file()]
    return [entry for _, entry in sorted(named)]


# ---------------------------------------------------------------- orphans


def finish_orphans(spool_dir: str | os.PathLike[str], *,
                   stale_after_s: float = DEFAULT_STALE_AFTER_S,
                   now: float | None = None) -> list[Path]:
    """Move files left in ``open/`` by dead writers into ``finished/``; return their new paths.

    A file is an orphan when no process holds its writer lock (locks die
    with their process) **and** either the pid in its name is not alive or
    the file was last modified more than ``stale_after_s`` seconds before
    ``now`` (the pid may have been reused).  A file whose lock is held is
    never touched.  Orphans are synced before and after the rename, and
    kept byte for byte: a torn last record is left for the reader to skip.
    Run it at edge start-up and from time to time from a supervisor.
    """
    open_dir = Path(spool_dir) / OPEN_DIR_NAME
    finished_dir = Path(spool_dir) / FINISHED_DIR_NAME
    if not open_dir.is_dir():
        return []
    finished_dir.mkdir(parents=True, exist_ok=True)
    now = time.time() if now is None else now
    moved: list[Path] = []
    for entry in sorted(open_dir.iterdir()):
        parsed = SpoolFileName.parse(entry.name)
        if parsed is None:
            log.warning("ignoring %s in the spool's open/ directory: not a spool file name", entry)
            continue
        target = _finish_if_orphaned(entry, finished_dir / entry.name, parsed.pid,
                                     stale_after_s=stale_after_s, now=now)
        if target is not None:
            moved.append(target)
    if moved:
        fsync_directory(finished_dir)
    return moved


def _finish_if_orphaned(source: Path, target: Path, pid: int, *, stale_after_s: float,
                        now: float) -> Path | None:
    try:
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # finished by its writer or another finisher meanwhile
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # a live writer holds it
        stat = os.fstat(fd)
        if stat.st_nlink == 0:
            return None  # renamed or removed while we waited
        stale = now - stat.st_mtime > stale_after_s
        if process_alive(pid) and not stale:
            return None
        _sync_file(fd)
        _rename_no_clobber(source, target)
        log.info("finished orphaned spool file %s (%d bytes, writer pid %d %s)", target, stat.st_size,
                 pid, "stale" if stale else "gone")
        return target
    finally:
        os.close(fd)


def process_alive(pid: int) -> bool:
    """True when a process with this pid exists (it may be a different program after reuse)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as error:
        if error.errno == errno.ESRCH:
            return False
        raise
    return True
