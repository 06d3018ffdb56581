"""Built-in plugin: ``telemetry process``, ``telemetry reconcile`` and the
processor service of ``telemetry run``."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
from typing import Any

import click

from ...hookspecs import hookimpl
from ...commands import EXIT_FAILED, config_options, fail, finish, load_engine, profile_option
from ...redaction import redact
from ...supervision import describe_exit
from ...metrics.node import MemberPublisher, member_process

log = logging.getLogger(__name__)


def _stop_on_signals(stop: threading.Event) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


def _worker(config_path: str | None, overrides: tuple[str, ...], main: bool) -> None:
    """A processor worker process: builds its own engine and loops until SIGTERM."""
    from ...engine import Engine
    from .processor import Processor, processor_lock

    engine = Engine.from_config(config_path, overrides)
    stop = threading.Event()
    _stop_on_signals(stop)
    threading.Thread(target=_stop_without_parent, args=(stop, os.getppid()), name="parent-watch",
                     daemon=True).start()
    lock = processor_lock(engine) if main else None
    processor = None
    try:
        with member_process(engine, _member_name(), "processor-worker"):  # in the node view, Graphite, --profile
            processor = Processor(engine)
            processor.run_forever(stop, engine.config.get("process.poll_interval"))
    finally:
        if processor is not None:
            processor.close()
        if lock is not None:
            lock.release()


def _stop_without_parent(stop: threading.Event, parent: int) -> None:
    """Stop this worker once the process that started it (``telemetry run``) is gone."""
    while not stop.wait(1.0):
        if os.getppid() != parent:
            log.warning("processor worker %d: its parent (pid %d) is gone; stopping", os.getpid(), parent)
            stop.set()


def _member_name() -> str:
    """``processor-<n>``: the name the starting service gave this process (else one made from the pid)."""
    name = multiprocessing.current_process().name
    return name if name.startswith("processor-") else f"processor-{os.getpid()}"


class ProcessorService:
    """One processor worker process as a ``telemetry run`` service: worker 0 holds the
    single-instance lock, the others (``process.workers - 1``) help it.  Each worker
    is its own service, so ``telemetry run`` restarts each one that dies on its own."""

    def __init__(self, engine: Any, index: int = 0) -> None:
        self.engine = engine
        self.origin = engine.origin
        self.index = index
        self.name = f"processor-{index}"
        self.process: Any = None

    def check(self) -> None:
        """Refuse now what the worker would refuse at start (e.g. ``kms_key_id`` without
        ``encryption: aws:kms``): build the publisher and the codec once."""
        self.engine.publisher()
        self.engine.codec(name=self.engine.config.get("compress.codec"))

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(target=_worker, args=(*self.origin, self.index == 0),
                                       name=self.name, daemon=False)
        self.process.start()

    def stop(self, timeout: float) -> None:
        process = self.process
        if process is None:
            return
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
        process.join(timeout)
        if process.is_alive():
            log.warning("processor worker %s did not stop in %.0fs; killing it", process.pid, timeout)
            process.kill()
            process.join()

    def failed(self) -> str | None:
        process = self.process
        if process is not None and process.exitcode is not None:
            return f"worker {process.name} (pid {process.pid}) exited with {describe_exit(process.exitcode)}"
        return None


@hookimpl(tryfirst=True)
def telemetry_services(engine: Any) -> list[Any]:
    """First in the list, so ``telemetry run`` starts the processor before the edge
    and stops it after the edge has drained and finished its spool files."""
    return [ProcessorService(engine, index) for index in range(engine.config.get("process.workers"))]


@hookimpl
def telemetry_register_commands(cli: click.Group) -> None:

    @cli.command()
    @config_options
    @click.option("--once", is_flag=True, help="Drain every finished and orphaned spool file, then exit.")
    @profile_option
    def process(config_path: str | None, overrides: tuple[str, ...], once: bool) -> None:
        """Process spool files into compressed, published, partitioned files.

        Without --once it runs until SIGTERM/SIGINT (workers from
        process.workers). With --once it exits 0 once everything is published,
        even when records were quarantined to _invalid/; it exits 1 only for an
        operational failure (inputs kept for the next run, or moved to failed/).
        """
        from ...errors import TelemetryError
        from .processor import Processor, processor_lock

        engine = load_engine(config_path, overrides)
        try:
            lock = processor_lock(engine)
        except TelemetryError as exc:
            fail(str(exc), EXIT_FAILED)
        engine.startup(command="process")
        code = 0
        processor = None
        try:
            processor = Processor(engine)
            stop = threading.Event()
            _stop_on_signals(stop)
            if once:
                summary = processor.run_once(stop=stop, wait_for_retries=True)
                click.echo(f"processed {summary.files} spool files: {summary.records_valid} valid records, "
                           f"{summary.records_invalid} invalid", err=True)
                if summary.failed_files or summary.retry_later:
                    for name in summary.failed_files:
                        click.echo(f"error: {name} moved to failed/ (see its .reason file)", err=True)
                    for name in summary.retry_later:
                        click.echo(f"error: {name} is still failing; it stays in work/ for the next run", err=True)
                    code = EXIT_FAILED
            else:
                extra = [multiprocessing.get_context("spawn").Process(target=_worker, args=(*engine.origin, False),
                                                                      name=f"processor-{index}")
                         for index in range(1, engine.config.get("process.workers"))]
                for worker in extra:
                    worker.start()
                publisher = MemberPublisher(engine.config.data_dir / "metrics", engine.node_id, "processor-0",
                                            float(engine.config.get("metrics.node_interval_s"))).start()
                try:
                    processor.run_forever(stop, engine.config.get("process.poll_interval"))
                finally:
                    publisher.stop()
                for worker in extra:
                    os.kill(worker.pid, signal.SIGTERM)
                    worker.join()
        except TelemetryError as exc:
            click.echo(f"error: {redact(exc)}", err=True)
            code = EXIT_FAILED
        finally:
            if processor is not None:
                processor.close()
            lock.release()
            finish(engine, "process")
        sys.exit(code)

    @cli.command()
    @config_options
    @click.option("--ids", "ids_file", type=click.File("r"), default=None,
                  help="File of submission ids that got a 2xx (one per line): each must have landed once "
                       "(published or quarantined) or be parked.")
    def reconcile(config_path: str | None, overrides: tuple[str, ...], ids_file: Any) -> None:
        """Prove every acknowledged submission is published, quarantined with a reason, or parked.

        Reads every manifest in the archive (local or S3), checks each
        published file and record count, and lists spool files not processed
        yet. Files gone because their retention ended (retention.published_days
        for a local archive, retention.expire_after_days on S3) are counted as
        expired, not as problems. Also counts quarantined records by category
        (less those replayed with telemetry replay), records parked in pending/
        for a Histograms.json revision, and spool files in failed/: any of
        those is a problem, as is a parked record that is neither still in
        pending/ nor landed since. Exit 0 when everything holds, 1 otherwise.
        """
        from .holdings import local_holdings
        from .manifests import reconcile as run_reconcile
        from ..spool.files import list_finished_files

        engine = load_engine(config_path, overrides)
        ids = [line.strip() for line in ids_file if line.strip()] if ids_file else None
        data_dir = engine.config.data_dir
        waiting = [p.name for p in list_finished_files(data_dir / "spool")]
        waiting += [p.name for p in sorted((data_dir / "work").glob("*")) if p.is_file()]
        retention = engine.config["retention"]
        expire_days = (retention.get("published_days") if engine.config.get("store.publish.backend") == "local"
                       else retention.get("expire_after_days"))
        result = run_reconcile(engine.publisher(), ids, waiting, expire_after_days=expire_days,
                               held=local_holdings(engine))
        for problem in result.problems:
            click.echo(f"problem: {redact(problem)}")
        for record_id in result.missing_ids:
            click.echo(f"missing: {record_id}")
        for record_id in result.duplicated_ids:
            click.echo(f"duplicated: {record_id}")
        verdict = "ok" if result.ok else "FAILED"
        expired = f" ({result.expired_files} expired by retention)" if result.expired_files else ""
        click.echo(f"{verdict}: {result.manifests} manifests, {result.files} files{expired}, "
                   f"{result.records} records")
        for line in accounting_lines(result):
            click.echo(line)
        sys.exit(0 if result.ok else EXIT_FAILED)


def accounting_lines(result: Any) -> list[str]:
    """Where the records that are not simply published are: reconcile's lines after its verdict."""
    by_category = ", ".join(f"{name} {count}" for name, count in sorted(result.quarantined.items()) if count)
    return [
        f"quarantined: {sum(result.quarantined.values())} records" + (f" ({by_category})" if by_category else ""),
        f"replayed: {result.replayed} records out of quarantine (their copies landed), "
        f"{result.replay_waiting} waiting for the processor",
        f"parked: {result.parked} records waiting in pending/ for their Histograms.json revision "
        f"({result.pending_records} records in {result.pending_files} files there), "
        f"{result.parked_landed} landed since",
        f"failed: {result.failed_files} files in failed/ holding {result.failed_records} acknowledged records "
        "not published",
    ]
