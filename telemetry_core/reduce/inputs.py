"""Built-in plugin: the inputs of MapReduce jobs, read through the publisher layout.

``telemetry_reduce_input`` answers for a local directory (a path or a
``file://`` URI) and for ``s3://bucket/prefix``; both are read through the
:class:`~telemetry_core.interfaces.Publisher` protocol (the local archive's
:class:`~telemetry_core.store.local.LocalArchive`, the
:class:`~telemetry_core.store.s3.publisher.S3Publisher`), so a job reads the same keys
in both (docs/storage.md).

:class:`ArchiveInput` lists with the filter pushed down: it walks the
directory dimensions one level at a time with ``list_dirs`` and descends
only into partitions the filter allows; in a leaf directory it lists only
the build ids the filter names when it names them (a key prefix per value),
and checks the file-name dimensions before yielding a file.  Top-level
names starting with ``_`` are system areas and are skipped, except
``_invalid/`` when the filter has ``include_invalid``.

Reading streams: ``open`` returns the publisher's stream (a local file, or
an S3 body that is read as it arrives: nothing is downloaded first) and
``decompress`` wraps it in the codec its suffix names.  The object pickles
without its connections (Spark ships it to tasks, which reconnect).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO, Any, Iterator
from urllib.parse import unquote, urlparse

from ..errors import ConfigError, TelemetryError
from ..hookspecs import hookimpl
from ..interfaces import InputFile, StoredObject
from .filters import DimensionFilter
from ..store.local import LocalArchive
from ..schema import Schema

log = logging.getLogger(__name__)

#: Suffix of uncompressed log files (read as they are).
PLAIN_SUFFIX = "log"
INVALID_AREA = "_invalid"
#: The value of every dimension of an invalid record that its key does not give.
INVALID_VALUE = "_invalid"


class InputError(TelemetryError):
    """An input file cannot be read (unknown codec ...); counted against that file."""


def parse_name(name: str) -> tuple[list[str], str] | None:
    """Split a log file name ``<a>.<b>.<node>.<seq>.log.<suffix>`` (or the original
    server's ``<a>.<b>.v2.log.<uuid>.lzma``) into its leading components and its
    suffix; ``None`` for names that are not log files."""
    parts = name.split(".")
    if len(parts) < 3 or "log" not in parts[2:]:
        return None
    return parts, parts[-1]


class ArchiveInput:
    """An :class:`~telemetry_core.interfaces.InputSource` over a publisher's keys.

    ``recipe`` rebuilds the publisher in another process: ``("local", root)``
    or ``("s3", S3Settings)``.  ``codec_for(suffix)`` (the engine's codec
    lookup) is called in the listing process only.
    """

    def __init__(self, recipe: tuple[str, Any], schema: Schema, engine: Any) -> None:
        self.recipe = recipe
        self.schema = schema
        self.local_files = recipe[0] == "local"
        self._engine = engine
        self._codecs: dict[str, Any] = {}
        self._publisher: Any = None
        self._pid = 0
        self.uri = self.publisher.uri

    # ------------------------------------------------------------------ plumbing

    @property
    def publisher(self) -> Any:
        """The publisher of this process (built again after a fork or in a Spark task)."""
        if self._publisher is None or self._pid != os.getpid():
            kind, argument = self.recipe
            if kind == "local":
                self._publisher = LocalArchive(Path(argument))
            else:
                from ..store.s3.publisher import S3Publisher

                self._publisher = S3Publisher(argument)
            self._pid = os.getpid()
        return self._publisher

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_engine=None, _publisher=None, _pid=0)
        return state

    # ------------------------------------------------------------------ listing

    def list(self, dimension_filter: DimensionFilter) -> Iterator[InputFile]:
        """Files whose partition ``dimension_filter`` allows, in key order."""
        names = self.schema.names
        directory_levels = len(names) - min(2, len(names))
        yield from self._walk("", 0, directory_levels, dimension_filter)
        if dimension_filter.include_invalid:
            yield from self._invalid(dimension_filter)

    def _walk(self, prefix: str, level: int, levels: int, flt: DimensionFilter) -> Iterator[InputFile]:
        if level == levels:
            yield from self._files(prefix, levels, flt)
            return
        for directory in self.publisher.list_dirs(prefix):
            value = directory[len(prefix):].rstrip("/")
            if level == 0 and value.startswith("_"):
                continue  # system areas (_invalid/, _manifests/, _ledger/ ...)
            if flt.includes(level, value):
                yield from self._walk(directory, level + 1, levels, flt)

    def _files(self, prefix: str, levels: int, flt: DimensionFilter) -> Iterator[InputFile]:
        file_dims = len(self.schema.names) - levels
        values = flt.finite_values(levels)
        listings: list[Iterator[StoredObject]]
        if values is not None:  # list only the named build ids (one key prefix each)
            listings = [self.publisher.list(f"{prefix}{value}.") for value in sorted(values)]
        else:
            listings = [self.publisher.list(prefix)]
        directory_dims = tuple(prefix.rstrip("/").split("/")) if prefix else ()
        seen: set[str] = set()  # a name can start with two listed values ("2013." and "2013.5.")
        for listing in listings:
            for stored in listing:
                if stored.key in seen:
                    continue
                seen.add(stored.key)
                name = stored.key[len(prefix):]
                parsed = parse_name(name) if "/" not in name else None
                if parsed is None:
                    if "/" not in name:
                        log.debug("skipping %s: not a log file name", stored.key)
                    continue
                parts, suffix = parsed
                dims = directory_dims + tuple(parts[:file_dims])
                if all(flt.includes(levels + i, value) for i, value in enumerate(dims[levels:])):
                    yield self._item(stored, dims, suffix)

    def _invalid(self, flt: DimensionFilter) -> Iterator[InputFile]:
        names = self.schema.names
        date_index = flt.index("submission_date")
        for directory in self.publisher.list_dirs(f"{INVALID_AREA}/"):
            category = directory[len(INVALID_AREA) + 1:].rstrip("/")
            for stored in self.publisher.list(directory):
                name = stored.key[len(directory):]
                parsed = parse_name("x." + name) if "/" not in name else None  # <date>.<node>.<seq>.log.<sfx>
                if parsed is None:
                    continue
                parts, suffix = parsed
                dims = [INVALID_VALUE] * len(names)
                if len(names) > 1:
                    dims[1] = category
                if date_index is not None:
                    dims[date_index] = parts[1]
                    if not flt.includes(date_index, parts[1]):
                        continue
                yield self._item(stored, tuple(dims), suffix)

    def _item(self, stored: StoredObject, dims: tuple[str, ...], suffix: str) -> InputFile:
        if suffix not in self._codecs and suffix != PLAIN_SUFFIX:
            try:
                self._codecs[suffix] = self._engine.codec(name=suffix)
            except ConfigError as exc:
                self._codecs[suffix] = f"no codec reads .{suffix} files ({exc})"
        return InputFile(key=stored.key, size=stored.size, dims=dims)

    # ------------------------------------------------------------------ reading

    def open(self, item: InputFile) -> IO[bytes]:
        """The stored (compressed) bytes of ``item``, streamed."""
        return self.publisher.open(item.key)

    def decompress(self, item: InputFile, raw: IO[bytes]) -> IO[bytes]:
        """``raw`` wrapped in the reader of the codec ``item``'s suffix names."""
        suffix = item.key.rsplit(".", 1)[-1]
        if suffix == PLAIN_SUFFIX:
            return raw
        codec = self._codecs.get(suffix)
        if codec is None or isinstance(codec, str):
            raise InputError(codec or f"no codec reads .{suffix} files")
        return codec.open_reader(raw)


def local_root(uri: str) -> Path | None:
    """The directory a local input names (a path or ``file://`` URI), else ``None``."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return Path(uri) if parsed.scheme == "" else None


@hookimpl(trylast=True)
def telemetry_reduce_input(uri: str, engine: Any) -> ArchiveInput | None:
    """Local directories, ``file://`` URIs and ``s3://bucket/prefix``."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        from ..store.s3.publisher import S3Settings

        section = engine.config.get("store.publish") or {}
        settings = S3Settings(
            bucket=parsed.netloc, prefix=parsed.path.lstrip("/"), endpoint_url=section.get("endpoint_url"),
            region=section.get("region"), retries=section.get("retries", 4),
            connect_timeout=section.get("connect_timeout", 10.0), read_timeout=section.get("read_timeout", 60.0))
        return ArchiveInput(("s3", settings), engine.schema, engine)
    root = local_root(uri)
    if root is None:
        return None
    if not root.is_dir():
        raise ConfigError(f"input {uri} is not a directory; give --input an archive directory or s3://bucket/prefix")
    return ArchiveInput(("local", str(root)), engine.schema, engine)
