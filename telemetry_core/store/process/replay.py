"""Built-in plugin: ``telemetry replay``, quarantined records back through the processor.

A record quarantined in ``_invalid/<category>/`` keeps its original path,
body, receive time and client address (see :mod:`telemetry_core.store.layout`).
Once the cause is fixed (a missing add-on plugin installed, a limit raised),
``telemetry replay`` reads the quarantined lines through the publisher (local
archive or S3), frames each record again exactly as the edge spooled it, and
writes them as spool files into ``<data_dir>/spool/finished/``, where the
processor picks them up like any other.

A quarantined record is named by its **original**: the invalid file's key
and its line number (0-based).  For each spool file it writes, replay first
writes a **journal** ``<data_dir>/state/replay/<spool file>.json``::

    {"version": 1, "spool": "<spool file name>", "created_at": <epoch s>,
     "records": [["<invalid key>", <line>, "<record id>"], ...]}

then the spool file itself (under a temporary name in the same directory,
fsynced, then renamed, so the processor never sees a partial file).  After
the processor has published the manifest of that spool file it publishes
the journal to ``_replays/<node>/<spool file>.json`` and deletes the local
copy: an original listed in a published journal is *out of quarantine*
(its copy landed: published, or quarantined again under a new entry).

Replay is idempotent: originals listed in a published journal or in a local
journal still waiting for the processor are skipped.  A local journal whose
spool file is nowhere (replay died between the two writes) is discarded, so
its records are replayed next time.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import click
from greplin import scales

from ...atomic_files import fsync_directory, write_json_atomically
from ...errors import ConfigError, TelemetryError
from ...hookspecs import hookimpl
from .state import InstanceLock, ProcessorLocked
from .pending import PendingArea
from ..spool.files import SpoolFileName, SpoolRecordError
from ..spool.framing import encode_record_parts
from ...commands import EXIT_CONFIG, EXIT_FAILED, config_options, fail, finish, load_engine

log = logging.getLogger(__name__)

INVALID_PREFIX = "_invalid/"
REPLAY_PREFIX = "_replays/"
JOURNAL_VERSION = 1
#: Replayed only when named explicitly: an exact resubmission was already published once.
EXCLUDED_BY_DEFAULT = frozenset({"duplicate"})
#: A new replay spool file is started before one would grow past this.
MAX_SPOOL_FILE_BYTES = 64 * 1024 * 1024
#: Temporary names of replay spool files being written (never listed by the processor).
TEMPORARY_PREFIX = ".replay-"
#: Where a spool file named in a local journal may be while its journal waits to be published.
SPOOL_LOCATIONS = ("spool/finished", "work", "failed")

#: ``(invalid key, line number)``: one quarantined original.
Original = tuple[str, int]


def replay_journal_path(data_dir: Path, spool_name: str) -> Path:
    """The local journal of replay spool file ``spool_name`` (``state/replay/<name>.json``)."""
    return Path(data_dir) / "state" / "replay" / f"{spool_name}.json"


def replay_journal_key(node_id: str, spool_name: str) -> str:
    """The archive key the processor publishes that journal to, once the spool file's manifest is published."""
    return f"{REPLAY_PREFIX}{node_id}/{spool_name}.json"


def journal_originals(document: dict[str, Any]) -> list[tuple[str, int, str]]:
    """The ``(invalid key, line, record id)`` entries of a journal; ``ValueError`` if it is not one."""
    if not isinstance(document, dict) or document.get("version") != JOURNAL_VERSION:
        raise ValueError(f"not a version {JOURNAL_VERSION} replay journal")
    entries = []
    for entry in document.get("records", []):
        key, line, record_id = entry
        entries.append((str(key), int(line), str(record_id)))
    return entries


def published_journals(publisher: Any) -> Iterator[tuple[str, list[tuple[str, int, str]] | Exception]]:
    """Every published journal: ``(key, entries)``, or ``(key, error)`` for one that cannot be read."""
    for stored in publisher.list(REPLAY_PREFIX):
        if not stored.key.endswith(".json"):
            continue
        try:
            with publisher.open(stored.key) as handle:
                yield stored.key, journal_originals(json.load(handle))
        except (ValueError, TypeError, KeyError, OSError, TelemetryError) as exc:
            yield stored.key, exc


def local_journals(data_dir: Path) -> Iterator[tuple[Path, list[tuple[str, int, str]] | Exception]]:
    """Every local journal (``state/replay/*.json``): ``(path, entries)`` or ``(path, error)``."""
    directory = Path(data_dir) / "state" / "replay"
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            yield path, journal_originals(json.loads(path.read_bytes()))
        except (ValueError, TypeError, OSError) as exc:
            yield path, exc


def spool_file_present(data_dir: Path, spool_name: str) -> bool:
    """True while the processor may still publish the journal of ``spool_name``."""
    return any((Path(data_dir) / where / spool_name).exists() for where in SPOOL_LOCATIONS)


# ---------------------------------------------------------------- reading the quarantine


@dataclass(frozen=True)
class QuarantinedRecord:
    """One line of an invalid file, with what is needed to spool it again."""

    key: str
    line: int
    record_id: str
    category: str
    path: str
    body: bytes
    received_at_ms: int
    client_addr: str | None


class ReplayUsageError(TelemetryError):
    """The command was given something it cannot use (a bad ``--since``, an unknown category)."""


class BadLine(ValueError):
    """A line of an invalid file that is not ``<id>\\t<json>`` with the fields replay needs."""


def parse_invalid_line(key: str, number: int, line: bytes) -> QuarantinedRecord:
    """Parse line ``number`` of invalid file ``key``; :class:`BadLine` says what is wrong."""
    record_id, tab, text = line.rstrip(b"\n").partition(b"\t")
    if not tab:
        raise BadLine("no tab between the id and the JSON")
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise BadLine(f"not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise BadLine("the JSON is not an object")
    path, stamp, addr, body = (document.get(name) for name in ("path", "received_at_ms", "client_addr", "body_b64"))
    if not isinstance(path, str) or not isinstance(stamp, int) or isinstance(stamp, bool) or stamp < 0:
        raise BadLine("path or received_at_ms missing or of the wrong type")
    if addr is not None and not isinstance(addr, str) or not isinstance(body, str):
        raise BadLine("client_addr or body_b64 of the wrong type")
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise BadLine("body_b64 is not base64") from None
    return QuarantinedRecord(key=key, line=number, record_id=record_id.decode("utf-8", "replace"),
                             category=key.split("/")[1], path=path, body=raw, received_at_ms=stamp,
                             client_addr=addr)


def invalid_files(publisher: Any) -> dict[str, list[str]]:
    """The quarantine's files by category: ``{category: [key, ...]}`` (keys sorted)."""
    found: dict[str, list[str]] = {}
    for stored in publisher.list(INVALID_PREFIX):
        parts = stored.key.split("/")
        if len(parts) == 3 and ".log" in parts[2]:
            found.setdefault(parts[1], []).append(stored.key)
    return {category: sorted(keys) for category, keys in sorted(found.items())}


def open_invalid_file(engine: Any, publisher: Any, key: str) -> IO[bytes]:
    """``key`` opened through the publisher and decompressed by its suffix (``.log`` is plain)."""
    suffix = key.rsplit(".", 1)[-1]
    raw = publisher.open(key)
    if suffix == "log":
        return raw
    try:
        return engine.codec(name=suffix).open_reader(raw)
    except ConfigError:
        raw.close()
        raise TelemetryError(f"no codec reads .{suffix} files") from None


def _file_day(key: str) -> str | None:
    """The submission day (``YYYYMMDD``) in an invalid file's name, when it has one."""
    day = key.rsplit("/", 1)[-1].split(".", 1)[0]
    return day if len(day) == 8 and day.isdigit() else None


# ---------------------------------------------------------------- the replay itself


@dataclass
class ReplayReport:
    """What :func:`replay` did (or, in a dry run, would do)."""

    dry_run: bool
    categories: list[str] = field(default_factory=list)
    replayed: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    #: ``key: reason`` for files that could not be read (wholly or after some lines).
    unreadable: dict[str, str] = field(default_factory=dict)
    #: ``key: [(line, reason), ...]`` for lines that are not valid quarantined records.
    bad_lines: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    spool_files: list[str] = field(default_factory=list)
    discarded_journals: list[str] = field(default_factory=list)

    @property
    def bad_line_count(self) -> int:
        return sum(len(lines) for lines in self.bad_lines.values())


class ReplaySpool:
    """Writes replayed records as spool files of at most ``max_bytes``, each after its journal.

    The spool file grows under a temporary name in ``spool/finished/``; :meth:`seal`
    writes the journal, fsyncs the file and renames it to its spool name.
    """

    def __init__(self, data_dir: Path, node_id: str, max_bytes: int = MAX_SPOOL_FILE_BYTES) -> None:
        self.data_dir = Path(data_dir)
        self.finished = self.data_dir / "spool" / "finished"
        self.node_id = node_id
        self.max_bytes = max_bytes
        self.written: list[str] = []
        self._sequence = 0
        self._file: IO[bytes] | None = None
        self._name = ""
        self._size = 0
        self._entries: list[list[Any]] = []

    def append(self, record: QuarantinedRecord) -> None:
        """Frame ``record`` as the edge did; :class:`SpoolRecordError` if it no longer fits the framing."""
        head, body = encode_record_parts(record.path, record.body, timestamp_ms=record.received_at_ms,
                                         client_addr=record.client_addr)
        size = len(head) + len(body)
        if self._file is not None and self._size + size > self.max_bytes:
            self.seal()
        if self._file is None:
            self._open()
        assert self._file is not None
        self._file.write(head)
        self._file.write(body)
        self._size += size
        self._entries.append([record.key, record.line, record.record_id])

    def _open(self) -> None:
        self.finished.mkdir(parents=True, exist_ok=True)
        replay_journal_path(self.data_dir, "x").parent.mkdir(parents=True, exist_ok=True)
        while True:
            self._sequence += 1
            name = str(SpoolFileName(started_ms=time.time_ns() // 1_000_000, node_id=self.node_id,
                                     pid=os.getpid(), sequence=self._sequence))
            if not spool_file_present(self.data_dir, name) and \
                    not replay_journal_path(self.data_dir, name).exists():
                break
        self._name = name
        self._file = open(self.finished / f"{TEMPORARY_PREFIX}{name}", "xb")
        self._size = 0
        self._entries = []

    def seal(self) -> None:
        """Journal first, then the spool file under its real name (both durable)."""
        if self._file is None:
            return
        handle, name = self._file, self._name
        self._file = None
        temporary = self.finished / f"{TEMPORARY_PREFIX}{name}"
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        write_json_atomically(replay_journal_path(self.data_dir, name),
                              {"version": JOURNAL_VERSION, "spool": name, "created_at": time.time(),
                               "records": self._entries})
        os.rename(temporary, self.finished / name)
        fsync_directory(self.finished)
        self.written.append(name)

    def abort(self) -> None:
        """Drop the file being written (its records were not journaled; they are replayed next time)."""
        if self._file is not None:
            self._file.close()
            (self.finished / f"{TEMPORARY_PREFIX}{self._name}").unlink(missing_ok=True)
            self._file = None


def already_replayed(engine: Any, publisher: Any, *, dry_run: bool,
                     report: ReplayReport) -> set[Original]:
    """Originals in published journals and in local journals still waiting for the processor.

    A local journal whose journal is already published is stale (the processor died before
    deleting it); one whose spool file is nowhere was left by a replay that died before
    writing the spool file.  Both are deleted (unless ``dry_run``); the second's records
    are not counted as replayed.
    """
    data_dir = engine.config.data_dir
    seen: set[Original] = set()
    published: set[str] = set()
    for key, entries in published_journals(publisher):
        if isinstance(entries, Exception):
            raise TelemetryError(f"cannot read replay journal {key}: {entries}; fix or remove it, then replay again")
        published.add(key)
        seen.update((original, line) for original, line, _ in entries)
    for path, entries in local_journals(data_dir):
        if isinstance(entries, Exception):
            raise TelemetryError(f"cannot read replay journal {path}: {entries}; fix or remove it, then replay again")
        spool_name = path.name[: -len(".json")]
        if replay_journal_key(engine.node_id, spool_name) in published:
            pass  # stale: the processor published it and died before deleting this copy
        elif spool_file_present(data_dir, spool_name):
            seen.update((original, line) for original, line, _ in entries)
            continue
        else:
            log.warning("replay journal %s names spool file %s, which was never written; its %d records "
                        "are replayed again", path, spool_name, len(entries))
            report.discarded_journals.append(path.name)
        if not dry_run:
            path.unlink(missing_ok=True)
    return seen


def parse_since(text: str | None) -> int | None:
    """``YYYY-MM-DD`` (a UTC day) as epoch milliseconds at its start."""
    if text is None:
        return None
    try:
        day = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise ReplayUsageError(f"--since {text!r} is not a date; give a UTC day as YYYY-MM-DD") from None
    return int(day.timestamp() * 1000)


def choose_categories(available: Iterable[str], named: Iterable[str]) -> list[str]:
    """The categories to replay: ``named`` (each must exist), else all but :data:`EXCLUDED_BY_DEFAULT`."""
    available = sorted(available)
    named = list(dict.fromkeys(named))
    unknown = [name for name in named if name not in available]
    if unknown:
        have = ", ".join(available) if available else "none: nothing is quarantined"
        raise ReplayUsageError(f"no quarantined records in category {', '.join(unknown)}; "
                             f"the archive holds: {have}")
    return named or [name for name in available if name not in EXCLUDED_BY_DEFAULT]


def replay(engine: Any, *, categories: Iterable[str] = (), since: str | None = None,
           dry_run: bool = False, max_file_bytes: int = MAX_SPOOL_FILE_BYTES) -> ReplayReport:
    """Write the chosen quarantined records, not replayed before, as spool files (see the module doc).

    Raises :class:`TelemetryError` for a bad ``since``, an unknown category, a
    second replay running, or an unreadable journal; unreadable invalid files
    and invalid lines are reported in the result and skipped.
    """
    since_ms = parse_since(since)
    data_dir = engine.config.data_dir
    publisher = engine.publisher()
    report = ReplayReport(dry_run=dry_run)
    files = invalid_files(publisher)
    report.categories = choose_categories(files, categories)
    stats = scales.collection("/replay", scales.IntDictStat("replayed"), scales.IntDictStat("skipped"),
                              scales.IntStat("unreadable_files"), scales.IntStat("bad_lines"),
                              scales.IntStat("spool_files"))
    lock = None
    if not dry_run:
        try:
            lock = InstanceLock(data_dir / "state" / "replay.lock").acquire()
        except ProcessorLocked:
            raise TelemetryError(f"another telemetry replay is running on {data_dir}; "
                                 "wait for it to finish") from None
    spool = ReplaySpool(data_dir, engine.node_id, max_file_bytes)
    try:
        if not dry_run:
            for leftover in (data_dir / "spool" / "finished").glob(f"{TEMPORARY_PREFIX}*"):
                leftover.unlink(missing_ok=True)  # a replay that died mid-file; nothing journaled
        done = already_replayed(engine, publisher, dry_run=dry_run, report=report)
        since_day = None if since_ms is None else dt.datetime.fromtimestamp(
            since_ms / 1000, dt.timezone.utc).strftime("%Y%m%d")
        for category in report.categories:
            for key in files[category]:
                day = _file_day(key)
                if since_day is not None and day is not None and day < since_day:
                    continue
                for record in _records_of(engine, publisher, key, report):
                    if since_ms is not None and record.received_at_ms < since_ms:
                        continue
                    if (record.key, record.line) in done:
                        report.skipped[category] += 1
                        stats.skipped[category] += 1
                        continue
                    try:
                        if dry_run:
                            encode_record_parts(record.path, record.body, timestamp_ms=record.received_at_ms,
                                                client_addr=record.client_addr)
                        else:
                            spool.append(record)
                    except SpoolRecordError as exc:
                        report.bad_lines.setdefault(key, []).append((record.line, str(exc)))
                        continue
                    report.replayed[category] += 1
                    stats.replayed[category] += 1
        spool.seal()
    except BaseException:
        spool.abort()
        raise
    finally:
        if lock is not None:
            lock.release()
    report.spool_files = spool.written
    stats.spool_files += len(spool.written)
    stats.unreadable_files += len(report.unreadable)
    stats.bad_lines += report.bad_line_count
    return report


def _records_of(engine: Any, publisher: Any, key: str, report: ReplayReport) -> Iterator[QuarantinedRecord]:
    """The valid lines of invalid file ``key``; bad lines and read errors go into ``report``."""
    number = -1
    try:
        with open_invalid_file(engine, publisher, key) as handle:
            for number, line in enumerate(handle):
                try:
                    yield parse_invalid_line(key, number, line)
                except BadLine as exc:
                    report.bad_lines.setdefault(key, []).append((number, str(exc)))
    except Exception as exc:  # noqa: BLE001 - any codec's error (LZMAError, ZstdError, ...): reported, counted
        where = f"after line {number}" if number >= 0 else "from the start"
        report.unreadable[key] = f"unreadable {where}: {type(exc).__name__}: {' '.join(str(exc).split())}"
        log.error("invalid file %s is %s", key, report.unreadable[key])


def format_report(report: ReplayReport) -> list[str]:
    """The command's output: a line per category, then a total."""
    verb = "would replay" if report.dry_run else "replayed"
    lines = [f"{category}: {verb} {report.replayed[category]}, "
             f"skipped (already replayed) {report.skipped[category]}" for category in report.categories]
    total = sum(report.replayed.values())
    if report.dry_run:
        lines.append(f"total: would replay {total} records, skipped {sum(report.skipped.values())} "
                     "already replayed; dry run, nothing written")
    else:
        where = f" into {len(report.spool_files)} spool files in spool/finished/" if report.spool_files else ""
        lines.append(f"total: replayed {total} records{where}, skipped {sum(report.skipped.values())} "
                     "already replayed" + ("; the processor picks them up" if total else ""))
    return lines


def release_parked_now(engine: Any, *, dry_run: bool) -> None:
    """``telemetry replay --parked``: move every parked file into spool/finished/ now.

    A record whose revision still cannot be fetched is parked again by the
    processor; the others are published."""
    area = PendingArea(Path(engine.config.data_dir), engine.node_id, retry_s=0.0, max_retry_s=0.0)
    files = list(area.parked_records())
    if dry_run:
        click.echo(f"would release {len(files)} parked file(s) of {len(area.keys())} revision(s)")
        engine.shutdown(command="replay")
        return
    summary = area.release_due(lambda revision, info: True, force=True)
    click.echo(f"released {summary.released_files} parked file(s); the processor picks them up")
    engine.shutdown(command="replay")


@hookimpl
def telemetry_register_commands(cli: click.Group) -> None:

    @cli.command("replay")
    @config_options
    @click.option("--category", "categories", multiple=True, metavar="C",
                  help="Replay this category (repeatable); default: every category but duplicate.")
    @click.option("--since", metavar="YYYY-MM-DD", default=None,
                  help="Only records received on or after this UTC day.")
    @click.option("--dry-run", is_flag=True, help="Say what would be replayed; write nothing.")
    @click.option("--parked", is_flag=True,
                  help="Instead: send every record parked in pending/ (waiting for a Histograms.json "
                       "revision) to the processor now, without waiting for its next scheduled try.")
    def replay_command(config_path: str | None, overrides: tuple[str, ...], categories: tuple[str, ...],
                       since: str | None, dry_run: bool, parked: bool) -> None:
        """Send quarantined records (_invalid/) through the processor again, once the cause is fixed.

        Writes them, byte for byte as received, as spool files into
        spool/finished/ for the processor (telemetry run or telemetry process),
        with a journal per file so a record is never replayed twice. Skips
        records already replayed. Exit 1 when an invalid file or line could not
        be read (the rest is still replayed).
        """
        engine = load_engine(config_path, overrides)
        if parked:
            release_parked_now(engine, dry_run=dry_run)
            return
        try:
            report = replay(engine, categories=categories, since=since, dry_run=dry_run)
        except TelemetryError as exc:
            fail(str(exc), EXIT_CONFIG if isinstance(exc, ReplayUsageError) else EXIT_FAILED)
        for name in report.discarded_journals:
            click.echo(f"warning: discarded replay journal state/replay/{name}: its spool file was never "
                       "written (replayed again now)", err=True)
        for key, reason in report.unreadable.items():
            click.echo(f"error: {key}: {reason}", err=True)
        for key, lines in report.bad_lines.items():
            click.echo(f"error: {key}: {len(lines)} invalid lines skipped (line {lines[0][0]}: {lines[0][1]})",
                       err=True)
        for line in format_report(report):
            click.echo(line)
        if dry_run:
            engine.shutdown(command="replay")
        else:
            finish(engine, "replay")
        if report.unreadable or report.bad_lines:
            fail(f"{len(report.unreadable)} invalid files unreadable, {report.bad_line_count} invalid lines "
                 "skipped; the other records were replayed", EXIT_FAILED)
