"""The objects that "pick one" hooks return, as typing protocols.

A factory hook (``telemetry_compress_codec``, ``telemetry_store_publisher``,
``telemetry_dedup_backend``, ``telemetry_reduce_executor`` ...) returns an
object built from the plugin's config; pipeline code only relies on the
methods listed here.  Plugins do not need to inherit from these classes:
any object with the methods works (structural typing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterable, Iterator, Protocol, runtime_checkable

from .errors import TelemetryError
from .records import Decision, DedupKey


@runtime_checkable
class Service(Protocol):
    """A long-running part of ``telemetry run`` (the edge, the processor ...).

    ``start`` returns once the service runs (in threads or child processes of
    its own); ``stop`` asks it to finish in-flight work and returns when it
    has, or when ``timeout`` seconds passed; ``failed`` returns a one-line
    reason when the service died, else ``None``.  ``telemetry run`` restarts
    a failed service: it calls ``stop`` (to reap what is left) and later
    ``start`` again on the same object, so ``start`` must work more than once.

    A service may also have ``check() -> None``, which raises
    :class:`~telemetry_core.errors.ConfigError` for a config it would refuse
    at start; ``telemetry config check`` and ``telemetry run`` call it first.
    """

    name: str

    def start(self) -> None: ...

    def stop(self, timeout: float) -> None: ...

    def failed(self) -> str | None: ...


@dataclass(frozen=True)
class Route:
    """An extra HTTP route on the edge: ``handler`` is an aiohttp handler
    (``async def handler(request) -> aiohttp.web.StreamResponse``)."""

    method: str
    path: str
    handler: Callable[..., Any]


class SpoolWriter(Protocol):
    """Appends accepted submissions to the raw spool, durably per its fsync policy.

    ``append`` returns once the record is written as its fsync policy
    promises (the edge acknowledges only then) and returns the bytes
    written; ``poll`` rotates a file that is too old (the edge calls it
    about once a second) and returns the path of a file it finished, if
    any; ``close`` finishes the current file.  The built-in is
    :class:`telemetry_core.store.spool.files.SpoolWriter`.
    """

    def append(self, path: str, body: bytes, *, client_addr: str | None = None,
               timestamp_ms: int | None = None) -> int: ...

    def poll(self) -> Any: ...

    def close(self) -> Any: ...


class Codec(Protocol):
    """A compression format.  ``name`` is what ``compress.codec`` names,
    ``suffix`` the file-name suffix (without the dot) of compressed files.
    Both directions stream with bounded memory."""

    name: str
    suffix: str

    def compress(self, source: IO[bytes], target: IO[bytes], level: int) -> None: ...

    def open_reader(self, source: IO[bytes]) -> IO[bytes]: ...


class StoreBatch(Protocol):
    """The work files the processor writes for one spool file.

    ``append(relative_path, data, records=1)`` appends ``data`` (holding
    ``records`` records) to the work file at ``relative_path`` (a key inside
    the archive without the codec suffix, e.g. made by
    ``telemetry_store_partition``); nothing is visible to readers until the
    processor has compressed and published the batch.  ``node_id`` and
    ``seq`` name the batch (every file name carries both).
    """

    node_id: str
    seq: int

    def append(self, relative_path: str, data: bytes, records: int = 1) -> None: ...


@dataclass(frozen=True)
class PublishedFile:
    """A file in long-term storage.

    ``key`` is its path relative to the archive root (the same locally and
    in S3: ``<data_dir>/archive/<key>`` or ``s3://<bucket>/<prefix><key>``);
    ``checksum`` is ``"sha256:<hex>"`` of its bytes; ``url`` says where it is.
    """

    key: str
    size: int
    checksum: str
    url: str


@dataclass(frozen=True)
class StoredObject:
    """One entry of a publisher listing; ``modified`` is its last-modified time in
    seconds since the epoch when the backend says (not compared for equality)."""

    key: str
    size: int
    modified: float | None = field(default=None, compare=False)


class PublishError(TelemetryError):
    """Publishing failed after the publisher's own retries (storage down,
    checksum mismatch after upload ...).  Operational: the processor keeps
    its input and retries later; nothing local is deleted."""


class PublishConflict(PublishError):
    """The key already exists with different content; nothing is overwritten."""


class Publisher(Protocol):
    """Long-term storage of published files (the local archive, S3 ...).

    * ``publish(local_path, key, checksum=)`` copies a local file to ``key``
      and returns only once the stored copy is **verified** to have
      ``checksum`` (``"sha256:<hex>"`` of the local file).  It never
      overwrites: when ``key`` already holds the same bytes it returns the
      existing object (so a publish repeated after a crash is harmless), and
      when it holds different bytes it raises :class:`PublishConflict`.
      Transient failures are retried with back-off, then
      :class:`PublishError` is raised.  The local file is left in place
      (the caller deletes it).
    * ``exists(key)``; ``open(key)`` streams an object's bytes;
    * ``list(prefix)`` yields every object under a key prefix;
      ``list_dirs(prefix)`` yields the "directories" one level below
      ``prefix`` (each ending in ``/``), so dimension filters are pushed
      down to listings instead of listing everything;
    * ``uri`` names the archive root (``file:///...`` or ``s3://bucket/prefix``).
    """

    uri: str

    def publish(self, local_path: str, key: str, *, checksum: str) -> PublishedFile: ...

    def exists(self, key: str) -> bool: ...

    def open(self, key: str) -> IO[bytes]: ...

    def list(self, prefix: str) -> Iterator[StoredObject]: ...

    def list_dirs(self, prefix: str) -> Iterator[str]: ...


class DedupBackend(Protocol):
    """Decides, atomically, what happens to a record under the dedup rules.

    ``decide`` returns the :class:`~telemetry_core.records.Decision` (the
    same one again when the same submission is decided twice).  A
    submission is ``(record id, body hash, received_at_ms, copy_id)``:
    ``copy_id`` (the copy's spool location) tells apart byte-identical
    copies received in the same millisecond, so only a retry of the same
    copy replays and another copy is a ``duplicate``.  A backend passes it
    to :func:`telemetry_core.dedup.rules.decide`; one whose ``decide`` does
    not accept ``copy_id=`` still works, without that distinction.  ``sync``
    makes every decision returned so far durable (the processor calls it
    before it commits a spool file's outputs); ``expire`` drops the state of
    sessions idle for longer than ``dedup.expire_days`` and returns how many
    (0 for backends that expire natively); ``close`` releases connections.
    The built-ins are in :mod:`telemetry_core.dedup.sqlite_backend` and
    :mod:`telemetry_core.dedup.redis_backend`; see docs/dedup.md.
    """

    def decide(self, key: DedupKey, record_id: str, received_at_ms: int, *, copy_id: str = "") -> Decision: ...

    def sync(self) -> None: ...

    def expire(self) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class InputFile:
    """One stored file a MapReduce job reads: ``key`` relative to the
    archive root, ``dims`` the dimension values its path encodes (in the
    schema's order; see docs/mapreduce.md for files of ``_invalid/``)."""

    key: str
    size: int
    dims: tuple[str, ...]


class InputSource(Protocol):
    """Where job inputs come from (a local directory, an S3 prefix ...).

    ``list`` yields only files whose partition matches ``dimension_filter``,
    and must not list excluded partitions in full; ``open`` streams the
    (still compressed) bytes of one file.

    Optional, used by the built-in executors when present:

    * ``decompress(item, raw)`` wraps ``raw`` (what ``open`` returned) in the
      reader of the file's codec (default: the bytes are read as they are);
    * ``local_files`` is true when ``open`` returns real local files, which
      the local executor then opens in its parent process before the
      mappers start (so a file deleted after listing is still read);
    * ``uri`` names the input.
    """

    def list(self, dimension_filter: Any) -> Iterator[InputFile]: ...

    def open(self, item: InputFile) -> IO[bytes]: ...


@dataclass
class JobSpec:
    """A MapReduce job as the runner hands it to an executor.

    ``output`` is the one text file of ``key\tvalue`` lines the executor
    writes; ``work_dir`` is where an executor may put intermediate files
    (``None``: its own choice); ``config_origin`` is the ``(config path,
    --set overrides)`` the runner's engine was built from, so processes that
    do not inherit it (Spark tasks) can build the same engine;
    ``combine_size`` is how many values a key collects before ``combine``
    runs; ``max_tracebacks`` how many tracebacks of failing user code are
    kept; ``progress`` whether to draw a progress bar.
    """

    job_path: str
    filter: Any
    output: str
    input_uri: str
    mappers: int = 1
    reducers: int = 1
    dedup: bool = False
    fail_fast: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    work_dir: str | None = None
    config_origin: tuple[str | None, tuple[str, ...]] = (None, ())
    combine_size: int = 50
    max_tracebacks: int = 5
    progress: bool = False


@dataclass
class JobContext:
    """What a job's ``map`` and ``reduce`` receive as ``context``.

    ``write(key, value)`` emits a pair; ``extras`` holds what
    ``telemetry_reduce_context`` plugins add (e.g. a histogram spec lookup),
    readable as attributes.  ``phase`` is ``"map"`` or ``"reduce"`` and
    ``task`` the mapper's or reducer's number; ``engine`` is the engine of
    the process running the task, for plugins (jobs should not need it).
    """

    write: Callable[[Any, Any], None]
    extras: dict[str, Any] = field(default_factory=dict)
    phase: str = "map"
    task: int = 0
    engine: Any = None

    def __getattr__(self, name: str) -> Any:
        extras = self.__dict__.get("extras", {})
        if name in extras:
            return extras[name]
        raise AttributeError(f"job context has no {name!r}; plugins add attributes with telemetry_reduce_context")


class Executor(Protocol):
    """Runs a job over input files (local processes, Spark ...).

    ``run`` writes ``job.output`` and returns its statistics (at least
    ``files``, ``records``, ``errors``; see docs/mapreduce.md).
    """

    def run(self, job: JobSpec, inputs: Iterable[InputFile], source: InputSource) -> dict[str, Any]: ...


RecordFilter = Callable[[str, tuple[str, ...], bytes], bool]
"""A read-time record filter: ``(record id, dims, body) -> keep?``, where
``body`` is the stored JSON bytes (the line after the tab, without the
newline).  The built-in executors also accept older two-argument filters
``(record id, dims)``, which they detect once per job."""


class HistogramSpec(Protocol):
    """The histogram definitions of one Histograms.json revision."""

    def bounds(self, name: str) -> tuple[int, ...] | None: ...
