"""The local retention sweep: delete old files from the areas of ``data_dir`` that may expire.

Areas and the ``retention`` / ``store.publish`` keys that govern them (age is
the file's modification time):

==========================  =========================================  ===========================
area                        what                                       kept for
==========================  =========================================  ===========================
``spool/processed/``        processed spool files kept for replay      ``spool_processed_days``
``failed/``                 inputs that failed, each with ``.reason``  ``failed_days``
``pending/*/*.spool``       records parked for a Histograms.json rev.  ``pending_days`` (null: never)
``archive/_invalid/``       invalid-record files                       ``invalid_days``
``archive/`` data (local)   the local archive itself                   ``published_days``
``archive/`` (S3 backend)   local copies of verified S3 uploads        ``keep_local_days``
==========================  =========================================  ===========================

Never touched: ``spool/open/`` and ``spool/finished/`` (unprocessed input),
``work/``, ``state/``, ``metrics/``, ``ledger/``, and ``archive/_manifests/``,
``archive/_ledger/`` and ``archive/_replays/``.  Only regular files are
deleted (symbolic links are neither followed nor removed, directories are
left in place), and a file whose name starts with ``.`` (a publish in
progress) is skipped.  A failed input and its ``.reason`` file go together.

Inputs in ``failed/`` and parked spool files in ``pending/`` hold
acknowledged records that were never published: deleting one logs a
WARNING naming how many records are lost (read with ``SpoolReader``) and
counts them in ``/retention/expired_records/<area>``.  In ``pending/`` only
``*.spool`` files are swept (``revision.json`` stays).

The built-in plugin adds ``telemetry retention sweep [--dry-run]``.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import click
from greplin import scales

from ..hookspecs import hookimpl
from ..store.spool.files import SpoolReader
from ..commands import EXIT_FAILED, config_options, fail, finish, load_engine

log = logging.getLogger(__name__)

DAY = 86400.0
#: Archive areas the sweep never deletes from (relative to ``archive/``).
KEPT_ARCHIVE_AREAS = ("_manifests", "_ledger", "_replays")
#: Areas whose files hold acknowledged, unpublished records: their expiry is a loss, logged as one.
RECORD_AREAS = ("failed", "pending")


@dataclass(frozen=True)
class Area:
    """One place the sweep looks at: ``path`` (a directory), files older than ``days`` go.

    ``skip`` names top-level subdirectories of ``path`` to leave alone.
    """

    name: str
    path: Path
    days: float | None
    skip: tuple[str, ...] = ()


@dataclass
class AreaReport:
    """What the sweep did (or would do, in a dry run) in one area."""

    files: int = 0
    bytes: int = 0
    kept: int = 0
    errors: int = 0
    paths: list[str] = field(default_factory=list)


@dataclass
class SweepReport:
    """Per-area results, in the order the areas were swept."""

    dry_run: bool
    areas: dict[str, AreaReport] = field(default_factory=dict)

    @property
    def files(self) -> int:
        return sum(area.files for area in self.areas.values())

    @property
    def bytes(self) -> int:
        return sum(area.bytes for area in self.areas.values())

    @property
    def errors(self) -> int:
        return sum(area.errors for area in self.areas.values())


def retention_areas(config: Any) -> list[Area]:
    """The areas of ``config.data_dir`` and how long each keeps files (``None`` = forever)."""
    data_dir = Path(config.data_dir)
    retention = config["retention"]
    archive = data_dir / "archive"
    local_backend = config.get("store.publish.backend") == "local"
    invalid_days = retention.get("invalid_days")
    data_days = retention.get("published_days")
    if not local_backend:
        # archive/ holds local copies of files already verified in the bucket
        keep = float(config.get("store.publish.keep_local_days") or 0)
        invalid_days = keep if invalid_days is None else min(keep, invalid_days)
        data_days = keep if data_days is None else min(keep, data_days)
    return [
        Area("spool_processed", data_dir / "spool" / "processed", retention.get("spool_processed_days")),
        Area("failed", data_dir / "failed", retention.get("failed_days")),
        Area("pending", data_dir / "pending", retention.get("pending_days")),
        Area("invalid", archive / "_invalid", invalid_days),
        Area("archive", archive, data_days, skip=("_invalid", *KEPT_ARCHIVE_AREAS)),
    ]


def sweep(areas: list[Area], *, now: float | None = None, dry_run: bool = False) -> SweepReport:
    """Delete (or, with ``dry_run``, list) every regular file older than its area allows.

    Returns a :class:`SweepReport`; each deletion is logged and counted under
    ``/retention``.  A file that cannot be deleted is logged and counted as
    an error; the sweep goes on.
    """
    now = time.time() if now is None else now
    report = SweepReport(dry_run=dry_run)
    stats = scales.collection("/retention", scales.IntDictStat("deleted_files"),
                              scales.IntDictStat("deleted_bytes"), scales.IntStat("errors"),
                              scales.IntDictStat("expired_records"))
    for area in areas:
        result = report.areas.setdefault(area.name, AreaReport())
        if area.days is None:
            continue
        cutoff = now - area.days * DAY
        for path, info in _files(area):
            if info.st_mtime > cutoff:
                result.kept += 1
                continue
            doomed = [(path, info)]
            if area.name == "failed":
                doomed += _reason_file_of(path)
            lost = _records_in(path) if area.name in RECORD_AREAS and not path.name.endswith(".reason") else None
            if lost is not None and dry_run:
                log.warning("would delete %s from %s/: %d acknowledged records never published would be lost",
                            path, area.name, lost)
            for victim, victim_info in doomed:
                if dry_run:
                    log.info("would delete %s (%s, %.1f days old)", victim, area.name,
                             (now - victim_info.st_mtime) / DAY)
                else:
                    try:
                        victim.unlink()
                    except FileNotFoundError:
                        continue  # gone meanwhile (a reason file swept with its input)
                    except OSError as exc:
                        log.error("could not delete %s: %s", victim, exc)
                        result.errors += 1
                        stats.errors += 1
                        continue
                    log.info("deleted %s (%s, %.1f days old)", victim, area.name,
                             (now - victim_info.st_mtime) / DAY)
                    if lost is not None and victim == path:
                        log.warning("retention deleted %s from %s/ after %.1f days: %d acknowledged records "
                                    "that were never published are lost", victim, area.name,
                                    (now - victim_info.st_mtime) / DAY, lost)
                        stats.expired_records[area.name] += lost
                    stats.deleted_files[area.name] += 1
                    stats.deleted_bytes[area.name] += victim_info.st_size
                result.files += 1
                result.bytes += victim_info.st_size
                result.paths.append(str(victim))
    return report


def _files(area: Area) -> Iterator[tuple[Path, os.stat_result]]:
    """Regular files under ``area.path`` (sorted; no symlinks followed; dot-files and ``skip`` left out).

    In ``failed/``, ``.reason`` files are yielded only when their input is gone
    (otherwise they go together with their input).
    """
    if not area.path.is_dir() or area.path.is_symlink():
        return
    for directory, dirnames, filenames in os.walk(area.path):
        here = Path(directory)
        if here == area.path:
            dirnames[:] = [d for d in dirnames if d not in area.skip]
        dirnames[:] = sorted(d for d in dirnames if not (here / d).is_symlink())
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = here / name
            if area.name == "failed" and name.endswith(".reason") and (here / name[: -len(".reason")]).exists():
                continue
            if area.name == "pending" and not name.endswith(".spool"):
                continue  # revision.json stays beside what is left
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode):
                yield path, info


def _records_in(path: Path) -> int:
    """How many records a spool file holds (0 if it cannot be read: the warning still names it)."""
    try:
        return sum(1 for _ in SpoolReader(path))
    except (OSError, ValueError) as exc:
        log.error("could not count the records of %s: %s", path, exc)
        return 0


def _reason_file_of(path: Path) -> list[tuple[Path, os.stat_result]]:
    if path.name.endswith(".reason"):
        return []
    reason = path.with_name(path.name + ".reason")
    try:
        info = reason.lstat()
    except FileNotFoundError:
        return []
    return [(reason, info)] if stat.S_ISREG(info.st_mode) else []


def format_report(report: SweepReport) -> list[str]:
    """One line per area and a total, for the command's output."""
    verb = "would delete" if report.dry_run else "deleted"
    lines = [f"{name}: {verb} {area.files} files ({area.bytes} bytes), kept {area.kept}"
             + (f", {area.errors} errors" if area.errors else "") for name, area in report.areas.items()]
    lines.append(f"total: {verb} {report.files} files ({report.bytes} bytes)")
    return lines


@hookimpl
def telemetry_register_commands(cli: click.Group) -> None:

    @cli.group()
    def retention() -> None:
        """Retention of local data (the S3 side is telemetry policy apply)."""

    @retention.command("sweep")
    @config_options
    @click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
    @click.option("--verbose", "-v", is_flag=True, help="Print every file deleted (or to delete).")
    def retention_sweep(config_path: str | None, overrides: tuple[str, ...], dry_run: bool, verbose: bool) -> None:
        """Delete files older than the retention settings from spool/processed/, failed/ and archive/.

        Never touches unprocessed spool files (spool/open/, spool/finished/), work/ or state/;
        pending/ only when retention.pending_days is set. Deleting a file of failed/ or pending/
        logs a WARNING with the number of acknowledged records lost.
        """
        engine = load_engine(config_path, overrides)
        report = sweep(retention_areas(engine.config), dry_run=dry_run)
        if verbose:
            for area in report.areas.values():
                for path in area.paths:
                    click.echo(path)
        for line in format_report(report):
            click.echo(line)
        finish(engine, "retention")
        if report.errors:
            fail(f"{report.errors} files could not be deleted (see the log)", EXIT_FAILED)
