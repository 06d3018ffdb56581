"""Built-in plugin: ``telemetry dedup check``, whether readers see one live record per session.

    telemetry dedup check [--input DIR|s3://bucket/prefix] [--config FILE] [--set KEY=VALUE ...]

It reads what ``telemetry mapreduce --dedup`` reads: the main store of the
archive (the configured publish target, or ``--input``) through the
``telemetry_reduce_input`` source, filtered by the same read-time filters
(the ledger of ``<input>/_ledger/`` plus this node's ``<data_dir>/ledger/``).
Each record that passes is given to ``telemetry_dedup_key``; records of the
de-duplicated kinds are counted per session.  docs/dedup.md promises
exactly one live record per session, so a session with more is reported.

Exit codes: 0 every session has at most one live record; 1 some session has
more (each is listed on stdout), or a file could not be read; 2 bad usage
(the configuration or the input cannot be used).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import click
import orjson

from . import rules
from ..hookspecs import hookimpl
from ..interfaces import JobSpec
from ..records import Record
from ..commands import EXIT_CONFIG, EXIT_FAILED, config_options, fail, finish, load_engine

#: Live records remembered per session (a session with more is reported with these).
SHOWN = 3


@dataclass
class LiveRecord:
    """One record a reader counts: its id, body hash, kind and the file holding it."""

    record_id: str
    body_hash: str
    kind: str
    key: str


@dataclass
class CheckReport:
    """What :func:`check_live_records` found."""

    uri: str
    files: int = 0
    records: int = 0
    skipped: int = 0
    sessions: dict[str, int] = field(default_factory=dict)
    shown: dict[str, list[LiveRecord]] = field(default_factory=dict)
    file_errors: dict[str, str] = field(default_factory=dict)
    key_errors: int = 0

    @property
    def multiple(self) -> dict[str, int]:
        """Sessions with more than one live record, and how many each has."""
        return {session: count for session, count in self.sessions.items() if count > 1}


def check_live_records(engine: Any, *, input_uri: str | None = None) -> CheckReport:
    """Read the main store as ``telemetry mapreduce --dedup`` does and count
    each session's live records of the de-duplicated kinds."""
    from ..reduce.filters import DimensionFilter
    from ..reduce.tasks import READ_ERRORS, adapt_filters

    uri = input_uri or engine.publisher().uri
    source = engine.reduce_input(uri=uri)
    everything = DimensionFilter.everything(engine.schema)
    job = JobSpec(job_path="<dedup check>", filter=everything, output="", input_uri=uri, dedup=True,
                  config_origin=engine.origin)
    filters = adapt_filters(engine.record_filters(job=job))
    names = engine.schema.names
    decompress = getattr(source, "decompress", None)
    report = CheckReport(uri=getattr(source, "uri", uri))
    for item in source.list(everything):
        report.files += 1
        dims = dict(zip(names, item.dims))
        try:
            raw = source.open(item)
            with contextlib.closing(raw), contextlib.closing(decompress(item, raw) if decompress else raw) as lines:
                for line in lines:
                    _count(engine, report, item.key, item.dims, dims, filters, line)
        except READ_ERRORS as exc:
            report.file_errors[item.key] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return report


def _count(engine: Any, report: CheckReport, key: str, item_dims: tuple[str, ...], dims: dict[str, str],
           filters: list[Any], line: bytes) -> None:
    record_id, tab, body = line.rstrip(b"\n").partition(b"\t")  # <id>\t<stored JSON>, as the mappers split it
    if not tab:
        return
    record_id = record_id.decode("utf-8", "replace")
    if not all(keep(record_id, item_dims, body) for keep in filters):
        report.skipped += 1
        return
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    record = Record(id=record_id, path="", raw=body, received_at_ms=0, dims=dict(dims), payload=payload,
                    source=key, stored_json=body, body_hash=rules.body_hash(body))
    try:
        dedup_key = engine.dedup_key(record=record)
    except rules.DedupKeyError:
        report.key_errors += 1
        return
    if dedup_key is None or dedup_key.kind not in rules.DEDUPLICATED_KINDS:
        return
    session = dedup_key.session
    report.records += 1
    report.sessions[session] = report.sessions.get(session, 0) + 1
    shown = report.shown.setdefault(session, [])
    if len(shown) < SHOWN:
        shown.append(LiveRecord(record_id, record.body_hash, dedup_key.kind, key))


def report_lines(report: CheckReport) -> list[str]:
    """The report: one line per session with more than one live record, then the summary."""
    lines = []
    for session, count in sorted(report.multiple.items()):
        shown = report.shown.get(session, [])
        listed = "; ".join(f"{r.record_id} {r.body_hash} ({r.kind}) in {r.key}" for r in shown)
        more = f"; and {count - len(shown)} more" if count > len(shown) else ""
        lines.append(f"session {session}: {count} live records: {listed}{more}")
    for key, message in sorted(report.file_errors.items()):
        lines.append(f"error: could not read {key}: {message}")
    verdict = (f"{len(report.multiple)} sessions have more than one live record"
               if report.multiple else "each has one live record")
    lines.append(f"dedup check: {len(report.sessions)} sessions checked ({report.records} live records, "
                 f"{report.skipped} superseded records skipped, {report.files} files in {report.uri}): {verdict}")
    if report.key_errors:
        lines.append(f"warning: {report.key_errors} records have no valid dedup key and were not counted")
    return lines


@hookimpl
def telemetry_register_commands(cli: click.Group) -> None:
    from ..errors import ConfigError, TelemetryError

    @cli.group()
    def dedup() -> None:
        """De-duplication of idle-daily and saved-session pings (docs/dedup.md)."""

    @dedup.command("check")
    @click.option("--input", "input_uri", default=None, metavar="DIR|s3://BUCKET/PREFIX",
                  help="Archive to read (default: the configured publish target).")
    @config_options
    def dedup_check(input_uri: str | None, config_path: str | None, overrides: tuple[str, ...]) -> None:
        """Report sessions that readers see with more than one live record.

        Reads the archive's main store and the dedup ledger as `telemetry mapreduce --dedup`
        does. Exits 1 when a session has more than one live record or a file cannot be read.
        """
        engine = load_engine(config_path, overrides)
        try:
            report = check_live_records(engine, input_uri=input_uri)
        except ConfigError as exc:
            fail(str(exc), EXIT_CONFIG)
        except TelemetryError as exc:
            fail(str(exc), EXIT_FAILED)
        finally:
            finish(engine, "dedup")
        for line in report_lines(report):
            click.echo(line)
        if report.multiple or report.file_errors:
            raise SystemExit(EXIT_FAILED)
