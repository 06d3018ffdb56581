"""Built-in plugin: the dedup ledger, its writer and its reader.

The write path is append-only: every valid record is stored, superseded
idle-dailies included.  Dedup decisions go to the **ledger** instead, plain
text files that readers apply (docs/dedup.md has the format):

* :class:`LedgerWriter` appends each decision to
  ``<data_dir>/ledger/<node>.<UTC time>.<pid>.<n>.ledger.part`` and, when
  the file is big or old enough (``dedup.ledger_max_bytes``,
  ``dedup.ledger_max_age_s``) or the writer closes, fsyncs it and renames it
  to ``... .ledger``: a finished file, never changed again, which the
  publisher copies to ``_ledger/<name>`` in the archive
  (:func:`finished_ledger_files`, :func:`ledger_archive_key`).  A ``.part``
  file left by a dead process is finished by the next writer (its torn last
  line cut off).
* :class:`DedupLedger` loads any number of ledger files (paths, or binary
  file objects such as S3 streaming bodies) and answers
  :meth:`~DedupLedger.is_superseded`; :meth:`~DedupLedger.record_filter`
  gives the read-time filter of ``telemetry mapreduce --dedup``.
* :func:`telemetry_reduce_record_filters` (this module's hook) returns that
  filter for jobs with ``dedup`` set, reading the ledger next to the job's
  input: ``<input>/_ledger/`` for a local directory or an ``s3://`` prefix,
  plus this node's own ``<data_dir>/ledger/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator
from urllib.parse import unquote, urlparse

from . import rules
from ..atomic_files import fsync_directory
from ..errors import TelemetryError
from ..hookspecs import hookimpl
from ..records import Decision

log = logging.getLogger(__name__)

#: Directory under ``data_dir`` the writers append to.
LEDGER_DIR = "ledger"
#: Reserved top-level prefix of ledger files in the archive (local and S3).
ARCHIVE_PREFIX = "_ledger/"
SUFFIX = ".ledger"
PART = ".part"
FORMAT_VERSION = 1
HEADER_PREFIX = b"# telemetry-dedup-ledger "
CHUNK = 1 << 20

_OPS = {b"S": True, b"L": False}


class LedgerFormatError(TelemetryError):
    """A ledger file holds a line that is not in the documented format."""


class LedgerFilterError(TelemetryError):
    """The ledger filter was called without what it needs to decide."""


# --------------------------------------------------------------------------- writing


def encode(decision: Decision) -> bytes:
    """The ledger lines of one decision: a ``D`` line, then one ``S``/``L`` line per change."""
    lines = [f"D\t{decision.version}\t{decision.record_id}\t{decision.body_hash}\t{decision.received_at_ms}\t"
             f"{decision.outcome}\n"]
    for record_id, digest, state in decision.changes:
        op = "S" if state == rules.SUPERSEDED else "L"
        lines.append(f"{op}\t{decision.version}\t{record_id}\t{digest}\n")
    data = "".join(lines).encode()
    if data.count(b"\t") != 5 + 3 * len(decision.changes) or data.count(b"\n") != 1 + len(decision.changes):
        raise ValueError(f"decision fields must not contain tabs or newlines: {decision!r}")
    return data


class LedgerWriter:
    """Appends decisions to this process's ledger file, crash-safely.

    One writer per process (the file name carries the node id and the pid);
    the open file is locked (``flock``) so :func:`finish_orphans` can tell a
    live writer's file from a dead one's.  Lines are buffered; :meth:`sync`
    makes every line written so far durable, :meth:`rotate` finishes the
    current file.  Files are created on the first write, so an idle writer
    leaves nothing behind.
    """

    def __init__(self, directory: str | os.PathLike[str], node_id: str, *, max_bytes: int = 64 << 20,
                 max_age_s: float = 3600.0, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.node_id = node_id
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.clock = clock
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._size = 0
        self._count = 0
        self.finished: list[Path] = finish_orphans(self.directory)

    @property
    def path(self) -> Path | None:
        """The file being written (``None`` before the first write or after a rotation)."""
        return self._path

    def write(self, decision: Decision) -> None:
        """Append the lines of one decision (buffered; see :meth:`sync`)."""
        data = encode(decision)
        if self._file is None:
            self._open()
        assert self._file is not None
        self._file.write(data)
        self._size += len(data)
        if self._size >= self.max_bytes or self.clock() - self._opened_at >= self.max_age_s:
            self.rotate()

    def sync(self) -> None:
        """Make every line written so far durable (flush + fsync); finish the
        file if it has become too old."""
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        if self.clock() - self._opened_at >= self.max_age_s:
            self.rotate()

    def rotate(self) -> Path | None:
        """Finish the current file: fsync, rename to its final ``.ledger``
        name, fsync the directory.  Returns the finished path, if any."""
        if self._file is None or self._path is None:
            return None
        self._file.flush()
        os.fsync(self._file.fileno())
        final = self._path.with_name(self._path.name[:-len(PART)])
        os.rename(self._path, final)
        fsync_directory(self.directory)
        self._file.close()  # releases the flock
        self._file = self._path = None
        self.finished.append(final)
        return final

    def close(self) -> Path | None:
        """Finish the current file (see :meth:`rotate`)."""
        return self.rotate()

    def _open(self) -> None:
        stamp = datetime.fromtimestamp(self.clock(), timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        while True:
            self._count += 1
            path = self.directory / f"{self.node_id}.{stamp}.{os.getpid()}.{self._count}{SUFFIX}{PART}"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            except FileExistsError:
                continue
            break
        fcntl.flock(fd, fcntl.LOCK_EX)
        header = (HEADER_PREFIX + f"{FORMAT_VERSION} node={self.node_id} pid={os.getpid()} "
                  f"created={stamp}\n".encode())
        os.write(fd, header)
        self._file = os.fdopen(fd, "ab", buffering=1 << 16)
        self._path = path
        self._opened_at = self.clock()
        self._size = len(header)
        fsync_directory(self.directory)


def finish_orphans(directory: str | os.PathLike[str]) -> list[Path]:
    """Finish ``.ledger.part`` files whose writer died: cut a torn last line,
    fsync, rename to ``.ledger`` (or delete a file with no decision in it).
    Files a live writer holds are left alone.  Returns the finished paths."""
    finished = []
    for path in sorted(Path(directory).glob(f"*{SUFFIX}{PART}")):
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer's file
            if not path.exists():  # finished by another process between glob and lock
                continue
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = handle.read()
            keep = data.rfind(b"\n") + 1
            if keep != len(data):
                os.ftruncate(fd, keep)
                log.warning("dedup ledger %s: cut a torn last line of %d bytes", path.name, len(data) - keep)
            if not any(line and not line.startswith(b"#") for line in data[:keep].split(b"\n")):
                os.unlink(path)
                continue
            os.fsync(fd)
            final = path.with_name(path.name[:-len(PART)])
            os.rename(path, final)
            fsync_directory(path.parent)
            finished.append(final)
        finally:
            os.close(fd)
    return finished


def finished_ledger_files(data_dir: str | os.PathLike[str]) -> list[Path]:
    """The finished ledger files of a data directory, oldest name first: what
    the publisher copies to the archive (see :func:`ledger_archive_key`)."""
    directory = Path(data_dir) / LEDGER_DIR
    return sorted(directory.glob(f"*{SUFFIX}")) if directory.is_dir() else []


def ledger_archive_key(path: str | os.PathLike[str]) -> str:
    """The archive key of a finished ledger file: ``_ledger/<file name>``."""
    name = Path(path).name
    if not name.endswith(SUFFIX):
        raise ValueError(f"{name} is not a finished ledger file (*{SUFFIX})")
    return ARCHIVE_PREFIX + name



# --------------------------------------------------------------------------- reading


def _record_key(record_id: str) -> bytes:
    """16 bytes of a UUID-shaped record id (any case); ``ValueError`` otherwise."""
    if len(record_id) != 36 or record_id[8] != "-" or record_id[13] != "-" or record_id[18] != "-" \
            or record_id[23] != "-":
        raise ValueError(f"{record_id!r} is not a UUID")
    return bytes.fromhex(record_id[:8] + record_id[9:13] + record_id[14:18] + record_id[19:23] + record_id[24:])


class DedupLedger:
    """The state of every stored record the ledger knows, as readers apply it.

    Load files with :meth:`add` (or :meth:`load`); for each ``(record id,
    body hash)`` the ``S``/``L`` line with the highest version wins, so
    files may be loaded in any order and loading one twice changes nothing.
    A record the ledger does not mention is live.  Memory: about 150 bytes
    per record ever superseded.  The object pickles (Spark ships it to its
    tasks with the filter).
    """

    def __init__(self) -> None:
        self._states: dict[bytes, int] = {}  # id bytes + hash bytes -> version * 2 + superseded
        self._ids: set[bytes] | None = None
        self.files = 0
        self.decisions = 0
        self.changes = 0
        self.torn = 0

    @classmethod
    def load(cls, sources: Iterable[str | os.PathLike[str] | IO[bytes]]) -> "DedupLedger":
        """A ledger from paths and/or binary file objects."""
        ledger = cls()
        for source in sources:
            ledger.add(source)
        return ledger

    def add(self, source: str | os.PathLike[str] | IO[bytes], *, name: str | None = None) -> None:
        """Load one ledger file: a path, or a binary file object read to its end
        (only ``read`` is used, so streaming bodies work).  A last line without
        a newline is a write in progress (or torn by a crash) and is skipped;
        any other malformed line raises :class:`LedgerFormatError`."""
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as handle:
                self._read(handle, name or os.fspath(source))
        else:
            self._read(source, name or getattr(source, "name", None) or "<stream>")
        self.files += 1

    def _read(self, stream: IO[bytes], name: str) -> None:
        states = self._states
        pending = b""
        number = 0
        while True:
            chunk = stream.read(CHUNK)
            if not chunk:
                break
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                number += 1
                if not line or line[:1] == b"#":
                    if line.startswith(HEADER_PREFIX):
                        self._check_header(line, name, number)
                    continue
                fields = line.split(b"\t")
                op = fields[0]
                try:
                    if op == b"D" and len(fields) == 6:
                        self.decisions += 1
                        continue
                    superseded = _OPS[op]
                    if len(fields) != 4:
                        raise ValueError(f"{len(fields)} fields")
                    version = int(fields[1])
                    key = _record_key(fields[2].decode("ascii")) + bytes.fromhex(fields[3].decode("ascii"))
                except (KeyError, ValueError, UnicodeDecodeError) as exc:
                    raise LedgerFormatError(f"{name}:{number}: not a ledger line ({exc}): {line[:120]!r}") from None
                value = version * 2 + superseded
                if value > states.get(key, -1):
                    states[key] = value
                self.changes += 1
        if pending:
            self.torn += 1
            log.info("dedup ledger %s: skipped an unfinished last line (%d bytes)", name, len(pending))
        self._ids = None

    @staticmethod
    def _check_header(line: bytes, name: str, number: int) -> None:
        version = line[len(HEADER_PREFIX):].split(b" ", 1)[0]
        if version != str(FORMAT_VERSION).encode():
            raise LedgerFormatError(f"{name}:{number}: ledger format {version.decode(errors='replace')!r}; "
                                    f"this version of telemetry-core reads format {FORMAT_VERSION}")

    def is_superseded(self, record_id: str, body_hash: str) -> bool:
        """Whether the stored record ``(record_id, body_hash)`` is superseded
        (readers skip it).  Records the ledger does not mention are live."""
        try:
            key = _record_key(record_id) + bytes.fromhex(body_hash)
        except ValueError:
            return False
        return self._states.get(key, 0) & 1 == 1

    def has_superseded(self, record_id: str) -> bool:
        """Whether any record with this id is superseded (a cheap pre-check:
        when false, a reader need not hash the record's body)."""
        try:
            return _record_key(record_id) in self._superseded_ids()
        except ValueError:
            return False

    def _superseded_ids(self) -> set[bytes]:
        if self._ids is None:
            self._ids = {key[:16] for key, value in self._states.items() if value & 1}
        return self._ids

    def superseded(self) -> Iterator[tuple[str, str]]:
        """Every superseded ``(record id, body hash)``."""
        for key, value in self._states.items():
            if value & 1:
                hexed = key[:16].hex()
                yield (f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}", key[16:].hex())

    def __len__(self) -> int:
        """How many records are superseded."""
        return sum(value & 1 for value in self._states.values())

    def write_compact(self, stream: IO[bytes]) -> int:
        """Write a compacted ledger file (the header and the latest ``S`` line of
        every superseded record; no ``D`` lines) to ``stream``; returns the
        number of lines.  Equivalent for readers to every file loaded."""
        stream.write(HEADER_PREFIX + f"{FORMAT_VERSION} compacted\n".encode())
        count = 0
        for key, value in sorted(self._states.items()):
            if value & 1:
                hexed = key[:16].hex()
                record_id = f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"
                stream.write(f"S\t{value >> 1}\t{record_id}\t{key[16:].hex()}\n".encode())
                count += 1
        return count

    def record_filter(self) -> "LedgerRecordFilter":
        """The read-time filter that drops superseded records (``--dedup``)."""
        self._superseded_ids()  # built once here, so a pickled filter ships it
        return LedgerRecordFilter(self)


class LedgerRecordFilter:
    """``filter(record_id, dims, body=None, *, body_hash=None) -> keep?``

    A :data:`~telemetry_core.interfaces.RecordFilter` that keeps a record
    unless the ledger says it is superseded.  Records of an id with no
    superseded record are kept at once; for the others the filter needs the
    record's body hash: pass ``body_hash=``, or ``body=`` (the stored JSON
    bytes, what follows ``<id>\\t`` on the line, without the newline) and it
    is computed with :func:`telemetry_core.dedup.rules.body_hash`.  Called
    with neither for such a record it raises :class:`LedgerFilterError`
    rather than guess.
    """

    def __init__(self, ledger: DedupLedger) -> None:
        self.ledger = ledger

    def __call__(self, record_id: str, dims: Any = (), body: bytes | None = None, *,
                 body_hash: str | None = None) -> bool:
        if not self.ledger.has_superseded(record_id):
            return True
        if body_hash is None:
            if body is None:
                raise LedgerFilterError(
                    f"record {record_id} has superseded versions, so the dedup filter needs its body: "
                    f"the job runner must call filter(record_id, dims, body=<stored JSON bytes>)")
            body_hash = rules.body_hash(body)
        return not self.ledger.is_superseded(record_id, body_hash)


# --------------------------------------------------------------------------- the reduce hook


def ledger_sources(uri: str, *, data_dir: str | os.PathLike[str] | None = None,
                   s3_client: Any = None) -> Iterator[tuple[str, Callable[[], IO[bytes]]]]:
    """Yield ``(name, opener)`` for every ledger file of an input: when
    ``data_dir`` is given, the node's own ``<data_dir>/ledger/`` files (being
    written, then finished), then the finished files under ``<uri>/_ledger/``
    (a local directory, ``file://`` URI or ``s3://bucket/prefix``).

    Each place is listed only after the files of the one before it were
    yielded, in the order a file moves (``.part``, finished, published, then
    deleted locally), so a file that moves on while it is read is found in
    the next place.  Open each file as it is yielded; one that is gone
    (``FileNotFoundError``) is in a later place."""
    if data_dir is not None:
        local = Path(data_dir) / LEDGER_DIR
        for pattern in (f"*{SUFFIX}{PART}", f"*{SUFFIX}"):
            for path in sorted(local.glob(pattern)):
                yield str(path), (lambda path=path: open(path, "rb"))
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        client = s3_client
        if client is None:
            import boto3

            client = boto3.client("s3")
        prefix = parsed.path.lstrip("/")
        prefix = f"{prefix.rstrip('/')}/{ARCHIVE_PREFIX}" if prefix else ARCHIVE_PREFIX
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=parsed.netloc, Prefix=prefix):
            for item in page.get("Contents", ()):
                if item["Key"].endswith(SUFFIX):
                    yield (f"s3://{parsed.netloc}/{item['Key']}",
                           lambda key=item["Key"]: client.get_object(Bucket=parsed.netloc, Key=key)["Body"])
    else:
        root = Path(unquote(parsed.path) if parsed.scheme == "file" else uri)
        for path in sorted((root / ARCHIVE_PREFIX).glob(f"*{SUFFIX}")):
            yield str(path), (lambda path=path: open(path, "rb"))


def load_ledger(uri: str, *, data_dir: str | os.PathLike[str] | None = None, s3_client: Any = None) -> DedupLedger:
    """A :class:`DedupLedger` from every ledger file of an input (see :func:`ledger_sources`)."""
    ledger = DedupLedger()
    for name, opener in ledger_sources(uri, data_dir=data_dir, s3_client=s3_client):
        try:
            stream = opener()
        except FileNotFoundError:  # a .part finished (renamed) between listing and opening
            continue
        with contextlib.closing(stream):
            ledger.add(stream, name=name)
    return ledger


def _s3_client(engine: Any) -> Any:
    import boto3

    settings = engine.config.get("store.publish") or {}
    return boto3.client("s3", endpoint_url=settings.get("endpoint_url"), region_name=settings.get("region"))


@hookimpl
def telemetry_reduce_record_filters(job: Any, engine: Any) -> list[LedgerRecordFilter] | None:
    """For ``job.dedup``: the ledger filter, loaded from the job's input (its
    ``_ledger/``) plus this node's ``<data_dir>/ledger/``.  The runner calls
    each filter as ``filter(record_id, dims, body=<stored JSON bytes>)``."""
    if not getattr(job, "dedup", False):
        return None
    uri = job.input_uri or engine.publisher().uri  # no --input: the configured archive
    client = _s3_client(engine) if urlparse(uri).scheme == "s3" else None
    ledger = load_ledger(uri, data_dir=engine.config.data_dir, s3_client=client)
    log.info("dedup: %d superseded records in %d ledger files (input %s)", len(ledger), ledger.files, uri)
    return [ledger.record_filter()]
