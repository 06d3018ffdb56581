"""The work of one mapper or reducer task, shared by every executor.

An executor decides where tasks run (processes, Spark tasks ...) and how
pairs travel between them; this module runs the job's code on records and
keys, the same way everywhere, so every executor gives the same answers:

* :class:`MapTask` reads ``<id>\\t<json>`` lines of decompressed input
  files, applies the read-time record filters, calls ``map(key, dims,
  value, context)`` (``dims`` a fresh list of the file's dimension values,
  ``value`` the JSON text without the newline) and hands each written pair
  to a sink, through the map-side combiner when the job has ``combine``;
* :class:`ReduceTask` groups pairs by key (combining every
  ``combine_size`` values), calls ``reduce(key, values, context)`` for each
  key and returns the output lines ``str(key)\\tstr(value)\\n`` sorted, so
  the merged output does not depend on the number of mappers or reducers,
  nor on the executor;
* :func:`partition_of` sends a key to a reducer by a hash that is the same
  in every process (Python's ``hash`` of a string is not).

Errors are counted, never fatal unless ``fail_fast``: a line that is not
``<id>\\t<utf-8>`` is a *bad line*; an exception in the job's code counts
against the file (or key) it happened on and its traceback is kept (the
first ``max_tracebacks``); a file that cannot be read to its end (corrupt,
truncated, gone) is a *file error*: the records read before the failure
stay counted.  With ``fail_fast`` the first error raises :class:`JobAborted`.
"""

from __future__ import annotations

import inspect
import logging
import lzma
import time
import zlib
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterable, Sequence

from ..errors import TelemetryError
from ..interfaces import InputFile, JobContext, JobSpec, RecordFilter
from .job import JobScript, load_job, user_traceback

log = logging.getLogger(__name__)

#: Keys the map-side combiner holds before it combines and hands everything on.
COMBINE_BUFFER_KEYS = 100_000


def _read_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError, lzma.LZMAError, zlib.error, TelemetryError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


#: What reading a stored file can raise (decompression, I/O, S3 streaming).
READ_ERRORS = _read_errors()


class JobAborted(TelemetryError):
    """``--fail-fast``: the first error stopped the job (the message holds its traceback)."""


@dataclass
class TaskStats:
    """Counts of one task, merged into the job's statistics.

    ``file_errors`` maps a file key to why it could not be read to its end;
    ``error_counts`` maps a file key (map errors) or ``reduce:<key>`` (reduce
    and combine errors) to how many times the job's code raised there.
    """

    files: int = 0
    bytes: int = 0
    records: int = 0
    skipped: int = 0
    bad_lines: int = 0
    map_errors: int = 0
    reduce_errors: int = 0
    keys: int = 0
    lines: int = 0
    file_errors: dict[str, str] = field(default_factory=dict)
    error_counts: dict[str, int] = field(default_factory=dict)
    tracebacks: list[str] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)

    def merge(self, other: "TaskStats", max_tracebacks: int = 5) -> "TaskStats":
        for name in ("files", "bytes", "records", "skipped", "bad_lines", "map_errors", "reduce_errors", "keys",
                     "lines"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.file_errors.update(other.file_errors)
        for key, count in other.error_counts.items():
            self.error_counts[key] = self.error_counts.get(key, 0) + count
        self.tracebacks.extend(other.tracebacks[: max(0, max_tracebacks - len(self.tracebacks))])
        self.tasks.extend(other.tasks)
        return self

    @property
    def errors(self) -> int:
        """Everything that makes the answer incomplete: job-code errors and unreadable files."""
        return self.map_errors + self.reduce_errors + len(self.file_errors)

    def as_dict(self) -> dict[str, Any]:
        return {"files": self.files, "bytes": self.bytes, "records": self.records, "skipped": self.skipped,
                "bad_lines": self.bad_lines, "map_errors": self.map_errors, "reduce_errors": self.reduce_errors,
                "errors": self.errors, "keys": self.keys, "lines": self.lines,
                "file_errors": dict(self.file_errors), "error_counts": dict(self.error_counts),
                "tracebacks": list(self.tracebacks)}


# --------------------------------------------------------------------------- partitioning


def stable_hash(key: Any) -> int:
    """A hash of a key that every process computes alike (CRC-32 of a canonical form).

    Keys that are equal in a dict hash alike: ``1``, ``1.0`` and ``True``
    are all the integer 1; tuples hash by their items.
    """
    if isinstance(key, str):
        return zlib.crc32(key.encode("utf-8", "surrogatepass"))
    if isinstance(key, (bool, int)) or (isinstance(key, float) and key.is_integer()):
        return zlib.crc32(b"\x01%d" % int(key))
    if isinstance(key, bytes):
        return zlib.crc32(b"\x02" + key)
    if isinstance(key, tuple):
        value = 0x345678
        for item in key:
            value = zlib.crc32(value.to_bytes(4, "little") + stable_hash(item).to_bytes(4, "little"))
        return value
    return zlib.crc32(b"\x03" + repr(key).encode("utf-8", "surrogatepass"))


def partition_of(key: Any, partitions: int) -> int:
    """The reducer (``0 .. partitions-1``) a key goes to."""
    return stable_hash(key) % partitions if partitions > 1 else 0


@dataclass(frozen=True)
class JobPlan:
    """What every executor settles before running: the inputs, the loaded job
    script, the read-time filters and how many mappers and reducers to use."""

    items: list[InputFile]
    script: JobScript
    filters: list[Callable[[str, Any, bytes], bool]]
    mappers: int
    reducers: int


def plan_job(engine: Any, job: JobSpec, inputs: Iterable[InputFile]) -> JobPlan:
    """Load the job script and filters; never more mappers than input files."""
    items = list(inputs)
    return JobPlan(items=items, script=load_job(job.job_path),
                   filters=adapt_filters(engine.record_filters(job=job)),
                   mappers=max(1, min(job.mappers, len(items))) if items else 0,
                   reducers=max(1, job.reducers))


def balance(items: Sequence[InputFile], partitions: int) -> list[list[InputFile]]:
    """Split files into ``partitions`` groups of about equal total size: the largest
    file first, each into the group with the least bytes so far (ties: lowest number)."""
    groups: list[list[InputFile]] = [[] for _ in range(max(partitions, 1))]
    sizes = [0] * len(groups)
    for item in sorted(items, key=lambda i: (-i.size, i.key)):
        smallest = min(range(len(groups)), key=lambda g: (sizes[g], g))
        groups[smallest].append(item)
        sizes[smallest] += item.size
    return groups


def adapt_filters(filters: Iterable[RecordFilter]) -> list[Callable[[str, Any, bytes], bool]]:
    """Every filter callable as ``f(record_id, dims, body)``; two-argument filters
    (the older ``(record_id, dims)`` form) are wrapped, detected once per job."""
    adapted = []
    for record_filter in filters:
        try:
            inspect.signature(record_filter).bind("id", (), b"")
        except TypeError:
            adapted.append(_TwoArgumentFilter(record_filter))
            continue
        except ValueError:
            pass  # no signature to inspect: call it with three arguments
        adapted.append(record_filter)
    return adapted


class _TwoArgumentFilter:
    def __init__(self, record_filter: Callable[[str, Any], bool]) -> None:
        self.record_filter = record_filter

    def __call__(self, record_id: str, dims: Any, body: bytes) -> bool:
        return self.record_filter(record_id, dims)


# --------------------------------------------------------------------------- combining


class Grouper:
    """Values grouped by key (insertion order), combined every ``combine_size`` values.

    ``combine(key, values, context)`` replaces a key's values with what it
    writes for that key (writing nothing keeps them); what it writes for
    other keys is added to those keys.
    """

    def __init__(self, combine: Callable[..., Any] | None, combine_size: int, on_error: Callable[[Any, BaseException],
                 None]) -> None:
        self.combine = combine
        self.combine_size = max(2, combine_size)
        self.groups: dict[Any, list[Any]] = {}
        self.on_error = on_error
        self._out: list[tuple[Any, Any]] = []
        self._context = JobContext(write=self._collect, phase="combine")

    def _collect(self, key: Any, value: Any) -> None:
        self._out.append((key, value))

    def add(self, key: Any, value: Any) -> None:
        values = self.groups.get(key)
        if values is None:
            self.groups[key] = [value]
            return
        values.append(value)
        if self.combine is not None and len(values) >= self.combine_size:
            self.combine_key(key)

    def combine_key(self, key: Any) -> None:
        """Run ``combine`` on one key's values (errors keep the values as they were)."""
        assert self.combine is not None
        values = self.groups[key]
        self._out = []
        try:
            self.combine(key, values, self._context)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - job code: counted, and the values are kept
            self.on_error(key, exc)
            return
        mine = [value for written_key, value in self._out if written_key == key]
        others = [(written_key, value) for written_key, value in self._out if written_key != key]
        if mine:
            self.groups[key] = mine
        for other_key, value in others:
            self.groups.setdefault(other_key, []).append(value)

    def combine_all(self) -> None:
        if self.combine is None:
            return
        for key in list(self.groups):
            if len(self.groups[key]) > 1:
                self.combine_key(key)


# --------------------------------------------------------------------------- tasks


class _Task:
    """What map and reduce tasks share: counting the job code's errors."""

    script: JobScript
    job: JobSpec
    stats: TaskStats

    def user_error(self, where: str, exc: BaseException, count_key: str) -> None:
        """Count an exception raised by job code; keep its traceback; abort with ``fail_fast``."""
        self.stats.error_counts[count_key] = self.stats.error_counts.get(count_key, 0) + 1
        text = None
        if len(self.stats.tracebacks) < self.job.max_tracebacks or self.job.fail_fast:
            text = f"{where}:\n{user_traceback(exc, self.script.path)}"
            if len(self.stats.tracebacks) < self.job.max_tracebacks:
                self.stats.tracebacks.append(text)
        if self.job.fail_fast:
            raise JobAborted(f"--fail-fast: {where} raised {type(exc).__name__}: {exc}\n{text}") from None


class MapTask(_Task):
    """Runs a job's ``map`` over files; written pairs go to ``sink(key, value)``.

    ``engine`` (of this process) is handed to ``telemetry_reduce_context``
    plugins; ``progress(files, records, compressed_bytes)`` is called now and
    then (at least once per file) with the counts since the last call.
    """

    def __init__(self, script: JobScript, job: JobSpec, *, filters: Sequence[Callable[[str, Any, bytes], bool]],
                 sink: Callable[[Any, Any], None], task: int, engine: Any,
                 progress: Callable[[int, int, int], None] | None = None) -> None:
        self.script = script
        self.job = job
        self.filters = list(filters)
        self.sink = sink
        self.stats = TaskStats()
        self.progress = progress
        self._current = ""
        self.grouper = Grouper(script.combine, job.combine_size, self._combine_error) if script.combine else None
        self.context = JobContext(write=self._write_combined if self.grouper else self._write, phase="map",
                                  task=task, engine=engine)
        if engine is not None:
            engine.reduce_context(context=self.context, job=job)

    # ---- writing

    def _write(self, key: Any, value: Any) -> None:
        hash(key)  # an unhashable key fails here, inside map, where the job's author can see it
        self.sink(key, value)

    def _write_combined(self, key: Any, value: Any) -> None:
        assert self.grouper is not None
        self.grouper.add(key, value)
        if len(self.grouper.groups) >= COMBINE_BUFFER_KEYS:
            self._drain()

    def _drain(self) -> None:
        assert self.grouper is not None
        self.grouper.combine_all()
        groups, self.grouper.groups = self.grouper.groups, {}
        for key, values in groups.items():
            for value in values:
                self.sink(key, value)

    # ---- errors

    def _combine_error(self, key: Any, exc: BaseException) -> None:
        self.stats.map_errors += 1
        self.user_error(f"combine({key!r}) in mapper {self.context.task} (file {self._current})", exc,
                        self._current or "combine")

    # ---- running

    def setup(self) -> None:
        if self.script.setup is not None:
            self._call_hook(self.script.setup, "setup")

    def teardown(self) -> None:
        if self.script.teardown is not None:
            self._call_hook(self.script.teardown, "teardown")

    def _call_hook(self, function: Callable[..., Any], name: str) -> None:
        try:
            function(self.context)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - job code: counted
            self.stats.map_errors += 1
            self.user_error(f"{name}(context) in mapper {self.context.task}", exc, name)

    def run_file(self, item: InputFile, reader: IO[bytes], position: Callable[[], int] | None = None) -> None:
        """Map every record of one decompressed file.  ``position()`` (optional) gives
        the compressed bytes consumed so far, for progress."""
        stats = self.stats
        self._current = item.key
        mapper, context, filters = self.script.map, self.context, self.filters
        dims_template = list(item.dims)
        record_dims = tuple(item.dims)
        records = skipped = bad = errors = 0
        reported_records, reported_bytes = 0, 0
        next_report = time.monotonic() + 0.5
        try:
            for line in reader:
                tab = line.find(b"\t")
                if tab < 0:
                    bad += 1
                    continue
                end = len(line) - 1 if line.endswith(b"\n") else len(line)
                view = memoryview(line)  # decoding a view of the line skips a copy of the value
                try:
                    key = str(view[:tab], "utf-8")
                    value = str(view[tab + 1:end], "utf-8")
                except UnicodeDecodeError:
                    bad += 1
                    continue
                if filters:
                    keep = True
                    body = line[tab + 1:end]
                    for record_filter in filters:
                        if not record_filter(key, record_dims, body):
                            keep = False
                            break
                    if not keep:
                        skipped += 1
                        continue
                records += 1
                try:
                    mapper(key, dims_template[:], value, context)
                except (Exception, SystemExit) as exc:  # noqa: BLE001 - job code: counted per file
                    errors += 1
                    self.user_error(f"map() on record {key} of {item.key}", exc, item.key)
                if self.progress is not None and not records & 1023 and time.monotonic() >= next_report:
                    done = position() if position is not None else reported_bytes
                    self.progress(0, records - reported_records, max(0, done - reported_bytes))
                    reported_records, reported_bytes = records, max(reported_bytes, done)
                    next_report = time.monotonic() + 0.5
        except JobAborted:
            raise
        except READ_ERRORS as exc:
            stats.file_errors[item.key] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            log.warning("could not read %s to its end (%d records read): %s", item.key, records,
                        stats.file_errors[item.key])
            if self.job.fail_fast:
                raise JobAborted(f"--fail-fast: could not read {item.key}: {stats.file_errors[item.key]}") from None
        finally:
            stats.files += 1
            stats.bytes += item.size
            stats.records += records
            stats.skipped += skipped
            stats.bad_lines += bad
            stats.map_errors += errors
            if bad:
                log.warning("%s: %d lines are not <id>\\t<utf-8 json> and were skipped", item.key, bad)
            if self.progress is not None:
                self.progress(1, records - reported_records, max(0, item.size - reported_bytes))

    def file_error(self, item: InputFile, exc: BaseException) -> None:
        """Count a file that could not even be opened."""
        self.stats.files += 1
        self.stats.bytes += item.size
        self.stats.file_errors[item.key] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        log.warning("could not open %s: %s", item.key, self.stats.file_errors[item.key])
        if self.progress is not None:
            self.progress(1, 0, item.size)
        if self.job.fail_fast:
            raise JobAborted(f"--fail-fast: could not open {item.key}: {self.stats.file_errors[item.key]}")

    def finish(self) -> None:
        """Call the job's ``teardown``, then hand on what the combiner still holds."""
        self.teardown()
        if self.grouper is not None:
            self._current = ""
            self._drain()


# --------------------------------------------------------------------------- reduce


class ReduceTask(_Task):
    """Groups pairs by key and runs ``reduce`` (or writes every value when the job has none)."""

    def __init__(self, script: JobScript, job: JobSpec, *, task: int, engine: Any) -> None:
        self.script = script
        self.job = job
        self.stats = TaskStats()
        self._lines: list[str] = []
        self.context = JobContext(write=self._write, phase="reduce", task=task, engine=engine)
        self.grouper = Grouper(script.combine, job.combine_size, self._combine_error)
        if engine is not None:
            engine.reduce_context(context=self.context, job=job)

    def _write(self, key: Any, value: Any) -> None:
        self._lines.append(f"{key}\t{value}\n")

    def _combine_error(self, key: Any, exc: BaseException) -> None:
        self.stats.reduce_errors += 1
        self.user_error(f"combine({key!r}) in reducer {self.context.task}", exc, f"combine:{key!r}")

    def add(self, pairs: Iterable[tuple[Any, Any]]) -> None:
        add = self.grouper.add
        for key, value in pairs:
            add(key, value)

    def run(self) -> list[str]:
        """Reduce every key; returns the output lines, sorted."""
        script = self.script
        if script.setup is not None:
            self._hook(script.setup, "setup")
        reduce = script.reduce
        groups = self.grouper.groups
        self.stats.keys += len(groups)
        if reduce is None:
            self.grouper.combine_all()
        for key, values in groups.items():
            if reduce is None:
                for value in values:
                    self._write(key, value)
                continue
            try:
                reduce(key, values, self.context)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - job code: counted per key
                self.stats.reduce_errors += 1
                self.user_error(f"reduce({key!r}) in reducer {self.context.task}", exc, f"reduce:{key!r}")
        if script.teardown is not None:
            self._hook(script.teardown, "teardown")
        self.grouper.groups = {}
        self._lines.sort()
        self.stats.lines += len(self._lines)
        return self._lines

    def _hook(self, function: Callable[..., Any], name: str) -> None:
        try:
            function(self.context)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - job code: counted
            self.stats.reduce_errors += 1
            self.user_error(f"{name}(context) in reducer {self.context.task}", exc, name)
