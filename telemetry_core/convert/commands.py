"""``telemetry convert`` and ``telemetry histograms show`` (added by the convert stage plugin)."""

from __future__ import annotations

import contextlib
import gc
import sys
from collections import Counter
from typing import IO, Any, Iterator

import click

from .buckets import DefinitionError
from ..errors import RecordError, TelemetryError
from ..store.process.decoder import convert, decode, stored_json
from ..store.process.payload_text import loads_payload
from ..records import Record
from ..store.spool.framing import decode_records
from ..commands import config_options, load_engine

#: First bytes of a framed spool file: our magic, or the node.js framings' 0x1e.
SPOOL_MAGICS = (b"\x89TSR", b"\x1e")
#: Largest input read into memory at once (spool files are memory-sized by rotation).
MAX_INPUT_BYTES = 1 << 30


def records_from(handle: IO[bytes], name: str, engine: Any) -> Iterator[Record | RecordError]:
    """Records of a framed spool file or of ``<uuid>\\t<json>`` lines (detected from the first bytes)."""
    data = handle.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise TelemetryError(f"{name} is larger than {MAX_INPUT_BYTES} bytes; split it")
    if data.startswith(SPOOL_MAGICS):
        for item in decode_records(data):
            try:
                yield decode(engine, path=item.path, body=item.body, timestamp_ms=item.timestamp_ms,
                             client_addr=item.client_addr, source=f"{name}:{item.offset}", schema=engine.schema,
                             max_inflated_bytes=engine.config.get("process.max_inflated_bytes"))
            except RecordError as error:
                yield error
        return
    for number, line in numbered_lines(data):
        if not line.strip():
            continue
        record_id, tab, body = line.partition(b"\t")
        record = Record(id=record_id.decode(errors="replace"), path="", raw=body, received_at_ms=0,
                        source=f"{name}:{number}")
        if not tab:
            yield _failed(record, RecordError("corrupted_data", f"line {number} has no <uuid>\\t<json> tab"))
            continue
        try:
            payload, warnings = loads_payload(body)
        except RecordError as error:
            yield _failed(record, RecordError(error.category, f"line {number}: {error.detail}"))
            continue
        if not isinstance(payload, dict):
            yield _failed(record, RecordError("bad_payload", f"line {number}: the payload is not an object"))
            continue
        record.payload = payload
        record.warnings.extend(warnings)
        del payload  # held across the yield, it would keep two payloads alive while the next is parsed
        yield record


def numbered_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(number, line)`` for each line of ``data``, as ``enumerate(data.splitlines(), start=1)``
    gives them, but one line at a time: splitting a large input at once costs more than
    converting some of its records."""
    if b"\r" in data:  # splitlines' other line break; rare in these inputs
        yield from enumerate(data.splitlines(), start=1)
        return
    find, size, start, number = data.find, len(data), 0, 0
    while start < size:
        end = find(b"\n", start)
        if end < 0:
            end = size
        number += 1
        yield number, data[start:end]
        start = end + 1


@contextlib.contextmanager
def startup_objects_frozen() -> Iterator[None]:
    """Keep what start-up built (modules, the engine, the plugins) out of the cyclic
    garbage collector's passes while records are converted (:func:`gc.freeze`).

    It lives until exit, and the collector would otherwise walk it again and
    again as each record's payload, tens of thousands of containers, is parsed
    and freed (measured: 6-8% of the time per record).
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _failed(record: Record, error: RecordError) -> RecordError:
    error.record = record  # type: ignore[attr-defined]
    return error


def add_commands(cli: click.Group) -> None:

    @cli.command("convert")
    @config_options
    @click.argument("files", nargs=-1, type=click.File("rb"))
    def convert_command(config_path: str | None, overrides: tuple[str, ...], files: tuple[IO[bytes], ...]) -> None:
        """Convert classic payloads to v2 lines on stdout.

        FILES are framed spool files (ours or the original node.js logs) or
        <uuid><TAB><json> lines, detected from their first bytes; stdin when
        none is given. Failures go to stderr with a count per category; the
        exit code is 1 when any record failed.
        """
        engine = load_engine(config_path, overrides)
        inputs = files or (click.get_binary_stream("stdin"),)
        out = click.get_binary_stream("stdout")
        failures: Counter[str] = Counter()
        converted = 0
        with startup_objects_frozen():
            for handle in inputs:
                name = getattr(handle, "name", "<stdin>")
                for item in records_from(handle, name, engine):
                    if isinstance(item, RecordError):
                        failures[item.category] += 1
                        click.echo(f"{getattr(item, 'record', None) and item.record.source or name}: {item}",
                                   err=True)
                        continue
                    try:
                        convert(engine, item)
                        stored = stored_json(item)
                    except RecordError as error:
                        failures[error.category] += 1
                        click.echo(f"{item.source}: {error}", err=True)
                        continue
                    out.write(item.id.encode() + b"\t" + stored + b"\n")
                    converted += 1
                    # Free this record before the next one is parsed: its memory is then reused
                    # (warm) rather than held alongside (about a tenth of the time per record).
                    del item, stored
        out.flush()
        summary = ", ".join(f"{count} {category}" for category, count in sorted(failures.items()))
        click.echo(f"converted {converted} records" + (f"; failed: {summary}" if failures else ""), err=True)
        sys.exit(1 if failures else 0)

    @cli.group("histograms")
    def histograms() -> None:
        """Inspect Histograms.json revisions."""

    @histograms.command("show")
    @config_options
    @click.argument("revision")
    @click.argument("name", required=False)
    def show(config_path: str | None, overrides: tuple[str, ...], revision: str, name: str | None) -> None:
        """Show the histograms of REVISION (an info.revision URL), or one NAME's bucket bounds."""
        engine = load_engine(config_path, overrides)
        try:
            spec = engine.histogram_spec(revision=revision, info={})
        except RecordError as error:
            raise click.ClickException(str(error)) from None
        if spec is None:
            raise click.ClickException(f"no plugin knows the histograms of {revision}")
        if name is None:
            for histogram in sorted(spec):
                layout = spec.layout(histogram)
                click.echo(f"{histogram}\t{layout.kind}\t{layout.low}\t{layout.high}\t{layout.n_buckets}"
                           if layout else f"{histogram}\t(unresolved: {spec.definition_errors().get(histogram)})")
            return
        try:
            bounds = spec.bounds(name)
        except DefinitionError as error:
            raise click.ClickException(str(error)) from None
        if bounds is None:
            raise click.ClickException(f"{name} is not defined at {revision}")
        click.echo(" ".join(str(bound) for bound in bounds))
