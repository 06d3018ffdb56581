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

from .records import Decision, DedupKey


@runtime_checkable
class Service(Protocol):
    """A long-running part of ``telemetry run`` (the edge, the processor ...).

    ``start`` returns once the service runs (in threads or child processes of
    its own); ``stop`` asks it to finish in-flight work and returns when it
    has, or when ``timeout`` seconds passed; ``failed`` returns a one-line
    reason when the service died, else ``None``.
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
    :class:`telemetry_core.spool.SpoolWriter`.
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

    ``append(relative_path, data)`` appends ``data`` to the work file at
    ``relative_path`` (a path inside the store, made by
    ``telemetry_store_partition``); nothing is visible to readers until the
    processor publishes the batch.
    """

    def append(self, relative_path: str, data: bytes) -> None: ...


@dataclass(frozen=True)
class PublishedFile:
    """A compressed file in long-term storage: ``key`` is its path relative to
    the archive root (the same locally and in S3), ``checksum`` is
    ``"<algorithm>:<hex>"``."""

    key: str
    size: int
    checksum: str
    url: str
    records: int = 0
    sources: tuple[str, ...] = ()


class Publisher(Protocol):
    """Long-term storage of compressed files (a local archive, S3 ...)."""

    def publish(self, local_path: str, key: str, records: int, sources: tuple[str, ...]) -> PublishedFile: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> Iterator[str]: ...

    def open(self, key: str) -> IO[bytes]: ...


class DedupBackend(Protocol):
    """Decides, atomically, what happens to a record under the dedup rules."""

    def decide(self, key: DedupKey, record_id: str, received_at_ms: int) -> Decision: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class InputFile:
    """One stored file a MapReduce job reads: ``key`` relative to the
    archive root, ``dims`` the dimension values its path encodes."""

    key: str
    size: int
    dims: tuple[str, ...]


class InputSource(Protocol):
    """Where job inputs come from (a local directory, an S3 prefix ...).

    ``list`` yields only files whose partition matches ``dimension_filter``,
    and must not list excluded partitions in full; ``open`` streams the
    (still compressed) bytes of one file.
    """

    def list(self, dimension_filter: Any) -> Iterator[InputFile]: ...

    def open(self, item: InputFile) -> IO[bytes]: ...


@dataclass
class JobSpec:
    """A MapReduce job as the runner hands it to an executor."""

    job_path: str
    filter: Any
    output: str
    input_uri: str
    mappers: int = 1
    reducers: int = 1
    dedup: bool = False
    fail_fast: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobContext:
    """What a job's ``map`` and ``reduce`` receive as ``context``.

    ``write(key, value)`` emits a pair; ``extras`` holds what
    ``telemetry_reduce_context`` plugins add (e.g. a histogram spec lookup).
    """

    write: Callable[[Any, Any], None]
    extras: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        extras = self.__dict__.get("extras", {})
        if name in extras:
            return extras[name]
        raise AttributeError(f"job context has no {name!r}; plugins add attributes with telemetry_reduce_context")


class Executor(Protocol):
    """Runs a job over input files (local processes, Spark ...)."""

    def run(self, job: JobSpec, inputs: Iterable[InputFile], source: InputSource) -> dict[str, Any]: ...


RecordFilter = Callable[[str, tuple[str, ...]], bool]
"""A read-time record filter: ``(record id, dims) -> keep?``."""


class HistogramSpec(Protocol):
    """The histogram definitions of one Histograms.json revision."""

    def bounds(self, name: str) -> tuple[int, ...] | None: ...
