"""The processor: finished spool files in, compressed published files out.

For each finished spool file (see :mod:`telemetry_core.store.process.state` for
the crash-safe phases):

1. **claim** it by an atomic rename into ``work/`` (several workers, even
   on several processes, never take the same file) and allocate a sequence
   number;
2. **process** every record: decode (:mod:`telemetry_core.store.process.decoder`),
   convert hooks, serialize once, dedup hooks, store hooks (valid records
   into schema-partitioned work files, failures into ``_invalid/<category>/``
   with their original bytes), then write the manifest.  Records go
   :data:`DEDUP_CHUNK` at a time: each is decoded, converted, serialized
   and partitioned, the chunk's dedup decisions are made in one batch
   (:meth:`~telemetry_core.dedup.deduplicator.Deduplicator.decide_many`),
   then each is stored in order; the cyclic garbage collector is paused
   while a chunk is processed and runs once after it (:mod:`.collector`);
3. **compress** each work file with the configured codec;
4. **publish** each compressed file, then the manifest
   ``_manifests/<node>/<seq>.json`` (records, bytes, checksum, source), each
   verified by the publisher;
5. **finish**: remove the input (or keep it in ``spool/processed/``) and the
   work directory.

**One record never holds back another.**  Anything that goes wrong with
one record -- a :class:`~telemetry_core.errors.RecordError`, a limit of
``process.limits``, or any exception a stage or plugin raises on it
(``processing_error``, with the stage, exception type and message) --
sends that record to ``_invalid/<category>/`` and the file goes on.  A
record whose Histograms.json revision cannot be fetched right now is
*parked* (:mod:`telemetry_core.store.process.pending`) and processed again when the
revision is available; the rest of its file is published at once.

Only *operational* failures fail a file: the data directory (``OSError``),
the dedup backend, the codec or the publisher.  They keep the input, remove
the partial output, are logged with the file name and counted, and are
retried with exponential back-off; outages (publisher, dedup backend) for
as long as they last, other failures up to ``process.max_attempts`` times,
then the input moves to ``failed/`` with a ``.reason`` file.

**A full disk is an outage, not a failure**: ENOSPC, EDQUOT or EROFS
anywhere, or less than ``process.min_free_disk_bytes`` free on
``data_dir``'s disk, pauses the processor (partial output removed, no
attempt counted, logged once when it starts and once when it ends,
``/processor/disk_pauses``); it resumes on its own when space returns.
Nothing is dropped silently.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson
from greplin import scales

from ...redaction import redact
from ...dedup.deduplicator import Deduplicator
from ...dedup.ledger import finished_ledger_files, ledger_archive_key
from ...dedup.rules import DedupUnavailableError
from ...errors import ConfigError, RecordError, TelemetryError
from ...interfaces import PublishConflict, PublishError
from .manifests import Manifest, manifest_key
from ...atomic_files import fsync_directory, write_json_atomically
from .state import InstanceLock, WorkState, next_seq
from .collector import paused_collector
from .pending import PENDING_DIR, ParkedWriter, PendingArea, pending_key
from ..local import sha256_of
from .decoder import convert, decode, raw_record, serialize
from .limits import RecordLimits
from .replay import replay_journal_key, replay_journal_path
from ...convert.revisions import HgwebError
from ...convert.shapes import spec_request
from ..spool.files import SpoolReader, finish_orphans, list_finished_files
from .work_batch import WorkBatch

log = logging.getLogger(__name__)

#: Failures of the environment, not of the spool file: retried (with capped
#: back-off) for as long as they last, never counted towards max_attempts.
OUTAGES: tuple[type[Exception], ...] = (PublishError, DedupUnavailableError, HgwebError)

#: Errors that mean the disk cannot take more data: the processor pauses, it never fails a file for them.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})

STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
#: Records decoded, converted and partitioned before their dedup decisions are
#: asked for in one batch (memory is bounded by this many records in flight).
DEDUP_CHUNK = 32
#: Partial outputs of a phase, removed when the phase fails.
_PARTIAL_OUTPUTS = {"claimed": ("store", "out", "pending"), "processed": ("out",)}


def disk_full_error(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain (itself, its cause or context) that says the
    disk is full, read-only or over quota; ``None`` when there is none."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 16:
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return current
        if "database or disk is full" in str(current):  # SQLite's SQLITE_FULL
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


@dataclass
class _Prepared:
    """One spooled submission between :meth:`Processor._prepare` and :meth:`Processor._land`."""

    item: Any
    record: Any = None
    partition: str = ""
    #: The stage reached (or failed in).
    stage: str = "decode"
    #: What went wrong on the record before its dedup decision.
    error: Exception | None = None
    #: The dedup decision, or the exception deciding raised on this record.
    decision: Any = None


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class DiskFull(TelemetryError):
    """``data_dir``'s disk has less free space than ``process.min_free_disk_bytes``."""


@dataclass
class RunSummary:
    """What one pass of :meth:`Processor.run_once` did."""

    files: int = 0
    records_valid: int = 0
    records_invalid: int = 0
    records_parked: int = 0
    failed_files: list[str] = field(default_factory=list)
    retry_later: list[str] = field(default_factory=list)
    #: Set when the pass stopped because the disk is full (see ``Processor.disk_paused``).
    disk_paused: bool = False


class Processor:
    """Drives spool files through the pipeline; one per worker process."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        config = engine.config
        settings = config["process"]
        self.data_dir = config.data_dir
        self.spool_dir = self.data_dir / "spool"
        self.work_dir = self.data_dir / "work"
        self.failed_dir = self.data_dir / "failed"
        self.state_dir = self.data_dir / "state"
        self.max_inflated_bytes = settings["max_inflated_bytes"]
        self.limits = RecordLimits.from_config(settings["limits"])
        self.min_free_disk_bytes = settings["min_free_disk_bytes"]
        self.disk_retry_s = settings["disk_retry_s"]
        self.log_files = settings["log_files"]
        #: Why processing is paused for the disk (``None`` while it is not), and until when.
        self.disk_paused: str | None = None
        self._paused_by_floor = False
        self._disk_check_at = 0.0
        self.max_attempts = settings["max_attempts"]
        self.retry_backoff = settings["retry_backoff"]
        self.node_id = engine.node_id
        self.schema = engine.schema
        self.codec = engine.codec(name=config.get("compress.codec"))
        self.level = config.get("compress.level")
        if self.level not in getattr(self.codec, "levels", range(0, 23)):
            raise ConfigError(f"level {self.level} is out of range for codec {self.codec.name}",
                              source=config.source, key="compress.level")
        self.publisher = engine.publisher()
        self.max_backoff = settings["max_backoff"]
        self.dedup = None if config.get("dedup.backend") == "none" else Deduplicator.from_engine(engine)
        self._outages_this_run: dict[str, int] = {}
        self.keep_local_days = config.get("store.publish.keep_local_days", 0) or 0
        self.keep_processed_days = config.get("retention.spool_processed_days", 0) or 0
        self.pending = PendingArea(self.data_dir, self.node_id, retry_s=settings["pending_retry_s"],
                                   max_retry_s=settings["pending_max_retry_s"])
        self.stats = scales.collection(
            "/processor", scales.IntStat("files_processed"), scales.IntStat("files_failed"),
            scales.IntStat("files_retried"), scales.IntStat("records_valid"), scales.IntStat("records_invalid"),
            scales.IntDictStat("invalid"), scales.IntStat("published_files"), scales.IntStat("published_bytes"),
            scales.IntDictStat("dedup"), scales.IntStat("spool_skipped_bytes"), scales.IntStat("records_parked"),
            scales.IntStat("parked_released_files"), scales.IntStat("disk_pauses"), scales.IntStat("disk_paused"),
            scales.IntDictStat("decode_warnings"))
        for directory in (self.work_dir, self.failed_dir, self.state_dir, self.spool_dir / "finished"):
            directory.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ driving

    def run_once(self, *, stop: threading.Event | None = None, wait_for_retries: bool = False) -> RunSummary:
        """Drain every claimed, finished and orphaned spool file once.

        Files whose retry time has not come are left for later (or waited
        for, with ``wait_for_retries``, until they publish or fail for good).
        """
        summary = RunSummary()
        if not self._disk_ready():
            summary.disk_paused = True
            summary.retry_later = sorted(p.name for p in self._claimed() + list_finished_files(self.spool_dir))
            return summary
        finish_orphans(self.spool_dir)
        self._release_parked()
        while stop is None or not stop.is_set():
            if not self._disk_ready():
                summary.disk_paused = True
                if wait_for_retries:
                    time.sleep(self.disk_retry_s)
                    continue
                summary.retry_later = sorted(p.name for p in self._claimed() + list_finished_files(self.spool_dir))
                return summary
            pending = self._claimed() + [path for path in (self._claim(p) for p in list_finished_files(self.spool_dir))
                                         if path is not None]
            pending = [p for p in pending if self._outages_this_run.get(p.name, 0) < self.max_attempts]
            ready = [p for p in pending if self._retry_time(p) <= time.time()]
            if not ready:
                waiting = [p for p in pending if p.exists()]
                if wait_for_retries and waiting:
                    time.sleep(max(0.05, min(self._retry_time(p) for p in waiting) - time.time()))
                    continue
                summary.retry_later = sorted({p.name for p in waiting} | {
                    name for name in self._outages_this_run if (self.work_dir / name).exists()})
                self._publish_ledgers()
                return summary
            for path in ready:
                self.handle(path, summary)
        return summary

    def run_forever(self, stop: threading.Event, poll_interval: float) -> None:
        """Process until ``stop`` is set; a full disk pauses the loop, it never ends it."""
        while not stop.is_set():
            self._outages_this_run.clear()
            try:
                self.run_once(stop=stop)
            except Exception as exc:  # noqa: BLE001 - only a full disk is survived here
                if disk_full_error(exc) is None:
                    raise
                self._pause_for_disk(exc)
            stop.wait(poll_interval)

    # ------------------------------------------------------------------ disk and parked records

    def _disk_ready(self) -> bool:
        """False while processing is paused for the disk.  While paused, the free
        space is looked at every ``process.disk_retry_s`` seconds: a pause for the
        floor ends when the floor is met again; a pause for a write that failed
        (ENOSPC ...) lets the next file try and ends when a file gets through."""
        now = time.monotonic()
        if self.disk_paused is not None and now < self._disk_check_at:
            return False
        try:
            usage = os.statvfs(self.data_dir)
            free = usage.f_bavail * usage.f_frsize
        except OSError as exc:
            self._pause_for_disk(exc)
            return False
        if free < self.min_free_disk_bytes:
            self._pause_for_disk(DiskFull(f"{free} bytes free on {self.data_dir}'s disk, below "
                                          f"process.min_free_disk_bytes ({self.min_free_disk_bytes})"))
            return False
        if self._paused_by_floor:
            self._resume_after_disk(f"{free} bytes free")
        return True

    def _pause_for_disk(self, exc: BaseException) -> None:
        """Pause processing for ``process.disk_retry_s``; logged once per pause, counted."""
        self._disk_check_at = time.monotonic() + self.disk_retry_s
        self._paused_by_floor = isinstance(exc, DiskFull)
        if self.disk_paused is None:
            self.disk_paused = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            self.stats.disk_pauses += 1
            self.stats.disk_paused = 1
            log.error("disk full (%s): processing paused, nothing is lost or failed; it resumes on its own "
                      "when space returns (checked every %g s)", self.disk_paused, self.disk_retry_s)

    def _resume_after_disk(self, how: str) -> None:
        if self.disk_paused is not None:
            log.warning("disk has room again on %s (%s): processing resumed", self.data_dir, how)
        self.disk_paused = None
        self._paused_by_floor = False
        self.stats.disk_paused = 0

    def _release_parked(self) -> None:
        """Send parked records whose revision can now be fetched back through the pipeline."""
        try:
            released = self.pending.release_due(self._revision_available).released_files
        except OSError as exc:
            if disk_full_error(exc) is None:
                raise
            self._pause_for_disk(exc)
            return
        self.stats.parked_released_files += released

    def _revision_available(self, revision: str | None, info: dict[str, Any]) -> bool:
        try:
            self.engine.histogram_spec(revision=revision, info=info)
        except HgwebError as exc:
            log.info("Histograms.json for %s still cannot be fetched: %s", revision or info, exc)
            return False
        except Exception as exc:  # noqa: BLE001 - fails for good: the records are quarantined when processed
            log.info("Histograms.json for %s fails for good (%s); releasing its parked records",
                     revision or info, exc)
        return True

    def close(self) -> None:
        """Finish the dedup ledger and close the backend (at exit)."""
        if self.dedup is not None:
            self.dedup.close()
            self.dedup = None
            self._publish_ledgers()

    def _publish_ledgers(self) -> None:
        """Publish finished dedup ledger files to ``_ledger/``; each local copy is
        removed once its upload is verified (a failure leaves it for next time)."""
        for path in finished_ledger_files(self.data_dir):
            try:
                self.publisher.publish(str(path), ledger_archive_key(path), checksum=sha256_of(path))
            except FileNotFoundError:
                continue  # another worker published it and removed it first
            except (PublishError, OSError) as exc:
                log.warning("could not publish dedup ledger %s (will retry): %s", path.name, exc)
                return
            path.unlink(missing_ok=True)  # another worker may have published the same file at once

    def _claimed(self) -> list[Path]:
        inputs = sorted(p for p in self.work_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        for directory in self.work_dir.glob("*.d"):
            if not (self.work_dir / directory.name[:-2]).exists():  # input already removed: finish
                shutil.rmtree(directory, ignore_errors=True)
        return inputs

    def _claim(self, finished: Path) -> Path | None:
        target = self.work_dir / finished.name
        try:
            os.rename(finished, target)
        except FileNotFoundError:
            return None  # another worker claimed it first
        fsync_directory(self.work_dir)
        return target

    def _retry_time(self, path: Path) -> float:
        state_path = self.work_dir / f"{path.name}.d" / STATE_FILE
        try:
            return WorkState.load(state_path).next_attempt_at
        except (FileNotFoundError, ValueError, TypeError):
            return 0.0

    # ------------------------------------------------------------------ one file

    def handle(self, source: Path, summary: RunSummary) -> None:
        """Take one claimed file through its remaining phases (skipped when
        another worker holds it)."""
        try:
            guard = open(source, "rb")
        except FileNotFoundError:
            return
        with guard:
            try:
                fcntl.flock(guard.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            if source.exists():
                self._handle_locked(source, summary)

    def _handle_locked(self, source: Path, summary: RunSummary) -> None:
        work = self.work_dir / f"{source.name}.d"
        state_path = work / STATE_FILE
        try:
            work.mkdir(exist_ok=True)
            state = WorkState.load(state_path)
        except FileNotFoundError:
            try:
                state = WorkState(source=source.name, seq=next_seq(self.state_dir))
                state.save(state_path)
            except OSError as exc:
                if disk_full_error(exc) is None:
                    raise
                self._pause_for_disk(exc)
                return
        except OSError as exc:
            if disk_full_error(exc) is None:
                raise
            self._pause_for_disk(exc)
            return
        started, invalid_before = time.monotonic(), dict(self.stats.invalid)
        counts = (0, 0, 0)
        try:
            if state.phase == "claimed":
                counts = self._process(source, work, state)
                summary.records_valid += counts[0]
                summary.records_invalid += counts[1]
                summary.records_parked += counts[2]
                state.phase = "processed"
                state.save(state_path)
            if state.phase == "processed":
                self._compress(work, state)
                state.phase = "compressed"
                state.save(state_path)
            if state.phase == "compressed":
                self._publish(work, state)
                state.phase = "published"
                state.save(state_path)
            size = source.stat().st_size
            self._finish(source, work)
            summary.files += 1
            self.stats.files_processed += 1
            if self.log_files:
                self._log_file(source.name, size, counts, time.monotonic() - started, invalid_before)
            if self.disk_paused is not None:
                self._resume_after_disk(f"{source.name} went through")
        except Exception as exc:  # noqa: BLE001 - operational: keep input, count, retry or quarantine
            self._failed_attempt(source, work, state, exc, summary)

    def _log_file(self, name: str, size: int, counts: tuple[int, int, int], seconds: float,
                  invalid_before: dict[str, int]) -> None:
        """The one INFO line per processed spool file (``process.log_files``)."""
        duplicates = self.stats.invalid.get("duplicate", 0) - invalid_before.get("duplicate", 0)
        valid, invalid, parked = counts
        log.info("processed %s: %d records valid, %d invalid, %d duplicate, %d parked in %.2f s (%.2f MB/s)",
                 name, valid, invalid - duplicates, duplicates, parked, seconds,
                 size / 1e6 / seconds if seconds > 0 else 0.0)

    def _failed_attempt(self, source: Path, work: Path, state: WorkState, exc: Exception,
                        summary: RunSummary) -> None:
        """Count a failure: a full disk pauses processing (no attempt counted); an
        outage (storage, Histograms.json server, dedup backend unreachable) is
        retried with back-off for as long as it lasts; any other failure counts
        towards ``process.max_attempts``, then ``failed/``."""
        for partial in _PARTIAL_OUTPUTS.get(state.phase, ()):
            shutil.rmtree(work / partial, ignore_errors=True)
        if disk_full_error(exc) is not None:
            self._pause_for_disk(exc)
            summary.disk_paused = True
            return
        try:
            self._count_failure(source, work, state, exc, summary)
        except OSError as again:
            if disk_full_error(again) is None:
                raise
            self._pause_for_disk(again)
            summary.disk_paused = True

    def _count_failure(self, source: Path, work: Path, state: WorkState, exc: Exception,
                       summary: RunSummary) -> None:
        outage = isinstance(exc, OUTAGES) and not isinstance(exc, PublishConflict)
        if outage:
            state.outages += 1
            self._outages_this_run[source.name] = self._outages_this_run.get(source.name, 0) + 1
        else:
            state.attempts += 1
        state.last_error = redact(f"{type(exc).__name__}: {' '.join(str(exc).split())}")[:2000]
        log.error("processing %s failed in phase %s (%s): %s", source.name, state.phase,
                  f"outage {state.outages}, retried until it ends" if outage
                  else f"attempt {state.attempts} of {self.max_attempts}", state.last_error,
                  exc_info=not isinstance(exc, (TelemetryError, OSError)))
        if not outage and state.attempts >= self.max_attempts:
            self._quarantine(source, work, state)
            summary.failed_files.append(source.name)
            return
        tries = state.outages if outage else state.attempts
        state.next_attempt_at = time.time() + min(self.max_backoff, self.retry_backoff * 2 ** (tries - 1))
        state.save(work / STATE_FILE)
        self.stats.files_retried += 1

    def _quarantine(self, source: Path, work: Path, state: WorkState) -> None:
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        reason = {"source": source.name, "phase": state.phase, "attempts": state.attempts,
                  "last_error": state.last_error, "failed_at": time.time()}
        write_json_atomically(self.failed_dir / f"{source.name}.reason", reason)
        os.rename(source, self.failed_dir / source.name)
        fsync_directory(self.failed_dir)
        shutil.rmtree(work, ignore_errors=True)
        self.stats.files_failed += 1
        log.error("moved %s to %s after %d failed attempts: %s", source.name, self.failed_dir, state.attempts,
                  state.last_error)

    # ------------------------------------------------------------------ phases

    def _process(self, source: Path, work: Path, state: WorkState) -> tuple[int, int, int]:
        for partial in _PARTIAL_OUTPUTS["claimed"]:
            shutil.rmtree(work / partial, ignore_errors=True)
        batch = WorkBatch(work / "store", self.node_id, state.seq)
        parked = ParkedWriter(work)
        manifest = Manifest(node=self.node_id, seq=state.seq, source=source.name)
        reader = SpoolReader(source)
        valid = invalid = 0
        try:
            for chunk in _chunks(reader, DEDUP_CHUNK):
                with paused_collector():
                    chunk_valid, chunk_invalid = self._process_chunk(chunk, source.name, state.seq, batch,
                                                                     parked, manifest)
                valid += chunk_valid
                invalid += chunk_invalid
        except BaseException:
            batch.abort()
            parked.abort()
            raise
        batch.close()
        parked.close()
        if self.dedup is not None:
            self.dedup.sync()  # decisions durable before the batch is; a replay then gives the same answers
        manifest.records_read = valid + invalid + len(manifest.parked)
        manifest.skipped = {str(reason): {"spans": tally.spans, "bytes": tally.bytes}
                            for reason, tally in reader.stats.skipped.items()}
        manifest.file_records = dict(batch.records)
        write_json_atomically(work / MANIFEST_FILE, manifest.to_json())
        self.stats.spool_skipped_bytes += reader.stats.skipped_bytes
        return valid, invalid, len(manifest.parked)

    def _process_chunk(self, chunk: list[Any], source_name: str, seq: int, batch: WorkBatch,
                       parked: ParkedWriter, manifest: Manifest) -> tuple[int, int]:
        """Prepare, decide and land one chunk of records; ``(valid, invalid)``.  The
        chunk's records are freed when this returns (see :mod:`.collector`)."""
        valid = invalid = 0
        prepared = [self._prepare(item, source_name, seq) for item in chunk]
        self._decide(prepared)
        for one in prepared:
            record_id, landed = self._land(one, source_name, batch, parked)
            if landed.startswith(f"{PENDING_DIR}/"):
                manifest.parked.append([one.item.offset, record_id, f"{landed}/{source_name}"])
                continue
            manifest.records.append([one.item.offset, record_id, landed])
            if landed.startswith("_invalid/"):
                invalid += 1
            else:
                valid += 1
        return valid, invalid

    def _prepare(self, item: Any, source_name: str, seq: int) -> "_Prepared":
        """Decode, convert, serialize and partition one spooled submission; what
        goes wrong on it is kept on the result for :meth:`_land`, except the
        operational failures (``OSError``: the data directory; the dedup
        backend; the publisher), which fail the file."""
        engine = self.engine
        one = _Prepared(item)
        try:
            one.record = decode(engine, path=item.path, body=item.body, timestamp_ms=item.timestamp_ms,
                                client_addr=item.client_addr, source=f"{source_name}:{item.offset}",
                                schema=self.schema, max_inflated_bytes=self.max_inflated_bytes, limits=self.limits)
            for name in one.record.warnings:  # repaired text (payload_text): kept, counted by name
                self.stats.decode_warnings[name] += 1
            one.stage = "convert"
            convert(engine, one.record)
            one.stage = "serialize"
            serialize(one.record)
            one.stage = "partition"
            one.partition = WorkBatch.check_path(engine.partition(record=one.record, seq=seq))
            one.stage = "dedup"  # last before the store: a decided record is stored (docs/dedup.md)
        except (OSError, DedupUnavailableError, PublishError):
            raise
        except Exception as exc:  # noqa: BLE001 - handled per record by _land
            one.error = exc
        return one

    def _decide(self, prepared: list["_Prepared"]) -> None:
        """The dedup decisions of a chunk's partitioned records, in one call to the backend."""
        ready = [one for one in prepared if one.error is None]
        if self.dedup is None or not ready:
            return
        for one, result in zip(ready, self.dedup.decide_many(records=[one.record for one in ready])):
            one.decision = result

    def _land(self, one: "_Prepared", source_name: str, batch: WorkBatch,
              parked: ParkedWriter) -> tuple[str, str]:
        """Store one prepared record (or quarantine or park it); return (id, where it landed):
        the work file it was stored in, or ``pending/<key>`` when it was parked.

        Any exception on this record quarantines it, except the operational
        ones (``OSError``: the data directory; the dedup backend; the
        publisher), which fail the file.
        """
        engine = self.engine
        item = one.item
        batch.touched.clear()
        record = one.record
        stage = one.stage
        try:
            if one.error is not None:
                raise one.error
            if isinstance(one.decision, Exception):
                raise one.decision
            if one.decision is not None:
                self.stats.dedup[one.decision.outcome] += 1
            stage = "store"
            engine.store_record(record=record, partition=one.partition, batch=batch)
            self.stats.records_valid += 1
        except RecordError as error:
            record = getattr(error, "record", None) or record
            if record is None:
                raise
            self._quarantine_record(record, error, batch)
        except HgwebError as error:
            if stage != "convert" or record is None:
                raise
            return self._park(record, item, error, parked)
        except (OSError, DedupUnavailableError, PublishError):
            raise  # operational: the data directory, the dedup backend or the publisher
        except Exception as exc:  # noqa: BLE001 - a stage or plugin failed on this record: quarantine it
            if stage == "store" and batch.touched:
                raise TelemetryError(f"a store plugin failed part way through the record at "
                                     f"{source_name}:{item.offset}: {type(exc).__name__}: {exc}") from exc
            if record is None:
                record = raw_record(path=item.path, body=item.body, timestamp_ms=item.timestamp_ms,
                                    client_addr=item.client_addr, source=f"{source_name}:{item.offset}")
            message = " ".join(str(exc).split())[:500]
            self._quarantine_record(record, RecordError("processing_error",
                                                        f"{stage}: {type(exc).__name__}: {message}"), batch)
        if len(batch.touched) != 1:
            raise TelemetryError(f"record at {source_name}:{item.offset} was stored in {len(batch.touched)} "
                                 f"files ({', '.join(sorted(batch.touched)) or 'none'}); exactly one store must "
                                 f"write each record")
        return record.id or "-", next(iter(batch.touched))

    def _quarantine_record(self, record: Any, error: RecordError, batch: WorkBatch) -> None:
        batch.touched.clear()  # a store that failed part way wrote nothing that counts
        self.engine.store_invalid(record=record, error=error, batch=batch)
        self.stats.records_invalid += 1
        self.stats.invalid[error.category] += 1

    def _park(self, record: Any, item: Any, error: HgwebError, parked: ParkedWriter) -> tuple[str, str]:
        """Keep a record whose Histograms.json revision cannot be fetched now (see
        :mod:`telemetry_core.store.process.pending`); the rest of its file goes on."""
        wanted = spec_request(record.payload) if isinstance(record.payload, dict) else None
        revision, info = wanted if wanted is not None else (None, {})
        key = pending_key(revision, info)
        parked.park(key, revision=revision, info=info, path=item.path, body=item.body,
                    timestamp_ms=item.timestamp_ms, client_addr=item.client_addr)
        self.stats.records_parked += 1
        log.info("parked record %s of %s: %s", record.id or "-", record.source, " ".join(str(error).split())[:300])
        return record.id or "-", f"{PENDING_DIR}/{key}"

    def _compress(self, work: Path, state: WorkState) -> None:
        shutil.rmtree(work / "out", ignore_errors=True)
        manifest = Manifest.from_json(orjson.loads((work / MANIFEST_FILE).read_bytes()))
        files = []
        for relative, records in sorted(manifest.file_records.items()):
            key = f"{relative}.{self.codec.suffix}"
            target = work / "out" / key
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(work / "store" / relative, "rb") as source, open(target, "wb") as out:
                self.codec.compress(source, out, self.level)
                out.flush()
                os.fsync(out.fileno())
            files.append({"key": key, "records": records, "size": target.stat().st_size,
                          "checksum": sha256_of(target)})
        state.files = files

    def _publish(self, work: Path, state: WorkState) -> None:
        manifest = Manifest.from_json(orjson.loads((work / MANIFEST_FILE).read_bytes()))
        manifest.files = state.files
        manifest.records = [[offset, record_id, f"{path}.{self.codec.suffix}"]
                            for offset, record_id, path in manifest.records]
        manifest.file_records = {}
        for entry in state.files:
            published = self.publisher.publish(str(work / "out" / entry["key"]), entry["key"],
                                               checksum=entry["checksum"])
            self.stats.published_files += 1
            self.stats.published_bytes += published.size
            self.engine.published(published=published)
        manifest_path = work / "published-manifest.json"
        manifest_path.write_bytes(orjson.dumps(manifest.to_json(), option=orjson.OPT_SORT_KEYS))
        self.publisher.publish(str(manifest_path), manifest_key(self.node_id, state.seq),
                               checksum=sha256_of(manifest_path))
        journal = replay_journal_path(self.data_dir, state.source)
        if journal.exists():  # a replay spool file: its originals are out of quarantine once this is published
            self.publisher.publish(str(journal), replay_journal_key(self.node_id, state.source),
                                   checksum=sha256_of(journal))
            journal.unlink()
        self._keep_local_copies(work, state)

    def _keep_local_copies(self, work: Path, state: WorkState) -> None:
        if self.engine.config.get("store.publish.backend") == "local" or not self.keep_local_days:
            return
        archive = self.data_dir / "archive"
        for entry in state.files:
            target = archive / entry["key"]
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.replace(work / "out" / entry["key"], target)

    def _finish(self, source: Path, work: Path) -> None:
        self.pending.adopt(work, source.name)  # parked records outlive the work directory
        if source.exists():
            if self.keep_processed_days:
                processed = self.spool_dir / "processed"
                processed.mkdir(parents=True, exist_ok=True)
                os.replace(source, processed / source.name)
            else:
                source.unlink()
            fsync_directory(self.work_dir)
        shutil.rmtree(work, ignore_errors=True)


def processor_lock(engine: Any) -> InstanceLock:
    """The single-instance lock of the processor on ``engine``'s data directory."""
    return InstanceLock(engine.config.data_dir / "state" / "processor.lock").acquire()
