"""The processor: finished spool files in, compressed published files out.

For each finished spool file (see :mod:`telemetry_core.process_state` for
the crash-safe phases):

1. **claim** it by an atomic rename into ``work/`` (several workers, even
   on several processes, never take the same file) and allocate a sequence
   number;
2. **process** every record: decode (:mod:`telemetry_core.record_decoder`),
   convert hooks, serialize once, dedup hooks, store hooks (valid records
   into schema-partitioned work files, failures into ``_invalid/<category>/``
   with their original bytes), then write the manifest;
3. **compress** each work file with the configured codec;
4. **publish** each compressed file, then the manifest
   ``_manifests/<node>/<seq>.json`` (records, bytes, checksum, source), each
   verified by the publisher;
5. **finish**: remove the input (or keep it in ``spool/processed/``) and the
   work directory.

A record that fails goes to ``_invalid/``; an operational failure (a codec
or publisher error, an unreachable Histograms.json server or dedup backend,
a bug in a plugin) keeps the input, removes the partial output, is logged
with the file name and counted, and is retried with exponential back-off;
after ``process.max_attempts`` failures the input moves to ``failed/`` with
a ``.reason`` file.  Nothing is dropped silently.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from greplin import scales

from .dedup import Deduplicator
from .dedup_ledger import finished_ledger_files, ledger_archive_key
from .dedup_rules import DedupUnavailableError
from .errors import ConfigError, RecordError, TelemetryError
from .interfaces import PublishConflict, PublishError
from .manifests import Manifest, manifest_key
from .atomic_files import fsync_directory, write_json_atomically
from .process_state import InstanceLock, WorkState, next_seq
from .publish_local import sha256_of
from .record_decoder import convert, decode, serialize
from .replay import replay_journal_key, replay_journal_path
from .revisions import HgwebError
from .spool import SpoolReader, finish_orphans, list_finished_files
from .work_batch import WorkBatch

log = logging.getLogger(__name__)

#: Failures of the environment, not of the spool file: retried (with capped
#: back-off) for as long as they last, never counted towards max_attempts.
OUTAGES: tuple[type[Exception], ...] = (PublishError, DedupUnavailableError, HgwebError)

STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"


@dataclass
class RunSummary:
    """What one pass of :meth:`Processor.run_once` did."""

    files: int = 0
    records_valid: int = 0
    records_invalid: int = 0
    failed_files: list[str] = field(default_factory=list)
    retry_later: list[str] = field(default_factory=list)


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
        self.stats = scales.collection(
            "/processor", scales.IntStat("files_processed"), scales.IntStat("files_failed"),
            scales.IntStat("files_retried"), scales.IntStat("records_valid"), scales.IntStat("records_invalid"),
            scales.IntDictStat("invalid"), scales.IntStat("published_files"), scales.IntStat("published_bytes"),
            scales.IntDictStat("dedup"), scales.IntStat("spool_skipped_bytes"))
        for directory in (self.work_dir, self.failed_dir, self.state_dir, self.spool_dir / "finished"):
            directory.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ driving

    def run_once(self, *, stop: threading.Event | None = None, wait_for_retries: bool = False) -> RunSummary:
        """Drain every claimed, finished and orphaned spool file once.

        Files whose retry time has not come are left for later (or waited
        for, with ``wait_for_retries``, until they publish or fail for good).
        """
        summary = RunSummary()
        finish_orphans(self.spool_dir)
        while stop is None or not stop.is_set():
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
        while not stop.is_set():
            self._outages_this_run.clear()
            self.run_once(stop=stop)
            stop.wait(poll_interval)

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
            except (PublishError, OSError) as exc:
                log.warning("could not publish dedup ledger %s (will retry): %s", path.name, exc)
                return
            path.unlink()

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
        work.mkdir(exist_ok=True)
        state_path = work / STATE_FILE
        try:
            state = WorkState.load(state_path)
        except FileNotFoundError:
            state = WorkState(source=source.name, seq=next_seq(self.state_dir))
            state.save(state_path)
        try:
            if state.phase == "claimed":
                counts = self._process(source, work, state)
                summary.records_valid += counts[0]
                summary.records_invalid += counts[1]
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
            self._finish(source, work)
            summary.files += 1
            self.stats.files_processed += 1
        except Exception as exc:  # noqa: BLE001 - operational: keep input, count, retry or quarantine
            self._failed_attempt(source, work, state, exc, summary)

    def _failed_attempt(self, source: Path, work: Path, state: WorkState, exc: Exception,
                        summary: RunSummary) -> None:
        """Count a failure: an outage (storage, Histograms.json server, dedup backend
        unreachable) is retried with back-off for as long as it lasts; any other
        failure counts towards ``process.max_attempts``, then ``failed/``."""
        outage = isinstance(exc, OUTAGES) and not isinstance(exc, PublishConflict)
        if outage:
            state.outages += 1
            self._outages_this_run[source.name] = self._outages_this_run.get(source.name, 0) + 1
        else:
            state.attempts += 1
        state.last_error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:2000]
        log.error("processing %s failed in phase %s (%s): %s", source.name, state.phase,
                  f"outage {state.outages}, retried until it ends" if outage
                  else f"attempt {state.attempts} of {self.max_attempts}", state.last_error,
                  exc_info=not isinstance(exc, (TelemetryError, OSError)))
        for partial in ("store", "out") if state.phase == "claimed" else ("out",) if state.phase == "processed" else ():
            shutil.rmtree(work / partial, ignore_errors=True)
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

    def _process(self, source: Path, work: Path, state: WorkState) -> tuple[int, int]:
        shutil.rmtree(work / "store", ignore_errors=True)
        shutil.rmtree(work / "out", ignore_errors=True)
        batch = WorkBatch(work / "store", self.node_id, state.seq)
        manifest = Manifest(node=self.node_id, seq=state.seq, source=source.name)
        reader = SpoolReader(source)
        valid = invalid = 0
        try:
            for item in reader:
                landed = self._one_record(item, source.name, batch, state.seq)
                manifest.records.append([item.offset, landed[0], landed[1]])
                if landed[1].startswith("_invalid/"):
                    invalid += 1
                else:
                    valid += 1
        except BaseException:
            batch.abort()
            raise
        batch.close()
        if self.dedup is not None:
            self.dedup.sync()  # decisions durable before the batch is; a replay then gives the same answers
        manifest.records_read = valid + invalid
        manifest.skipped = {str(reason): {"spans": tally.spans, "bytes": tally.bytes}
                            for reason, tally in reader.stats.skipped.items()}
        manifest.file_records = dict(batch.records)
        write_json_atomically(work / MANIFEST_FILE, manifest.to_json())
        self.stats.spool_skipped_bytes += reader.stats.skipped_bytes
        return valid, invalid

    def _one_record(self, item: Any, source_name: str, batch: WorkBatch, seq: int) -> tuple[str, str]:
        """Run one spooled submission through the stages; return (id, file it landed in)."""
        engine = self.engine
        before = dict(batch.records)
        record = None
        try:
            record = decode(engine, path=item.path, body=item.body, timestamp_ms=item.timestamp_ms,
                            client_addr=item.client_addr, source=f"{source_name}:{item.offset}",
                            schema=self.schema, max_inflated_bytes=self.max_inflated_bytes)
            convert(engine, record)
            serialize(record)
            self._dedup(record)
            partition = engine.partition(record=record, seq=seq)
            engine.store_record(record=record, partition=partition, batch=batch)
            self.stats.records_valid += 1
        except RecordError as error:
            record = getattr(error, "record", None) or record
            if record is None:
                raise
            engine.store_invalid(record=record, error=error, batch=batch)
            self.stats.records_invalid += 1
            self.stats.invalid[error.category] += 1
        touched = [path for path, count in batch.records.items() if count != before.get(path, 0)]
        if len(touched) != 1:
            raise TelemetryError(f"record at {source_name}:{item.offset} was stored in {len(touched)} files "
                                 f"({', '.join(touched) or 'none'}); exactly one store must write each record")
        return record.id or "-", touched[0]

    def _dedup(self, record: Any) -> None:
        """Decide; a duplicate leaves the main store as ``_invalid/duplicate`` (a record error)."""
        if self.dedup is not None:
            self.stats.dedup[self.dedup.decide(record=record).outcome] += 1

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
