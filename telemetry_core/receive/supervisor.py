"""The edge supervisor: N worker processes sharing one port, restarted when they die.

:class:`EdgeService` is what ``telemetry run`` and ``telemetry serve`` start
(the :class:`~telemetry_core.interfaces.Service` protocol):

* ``start()`` finishes spool files orphaned by an earlier crash, checks that
  the port is free and reserves it (a bound, non-listening ``SO_REUSEPORT``
  socket, which also resolves ``receive.port: 0`` to one port for all
  workers), starts ``receive.workers`` worker processes
  (:mod:`telemetry_core.receive.worker`) and returns once every one of them
  accepts connections; it raises :class:`EdgeStartError` (with the worker's
  own one-line reason) when they cannot start.
* A monitor thread restarts a worker that exits while the service runs,
  after a back-off that doubles from 0.5 s up to
  ``receive.restart_backoff_max_s`` for a worker that keeps dying (reset
  once a worker has lived that long), and finishes the dead worker's spool
  file (``finish_orphans``) so what it acknowledged reaches the processor.
  A worker that fails to *start* :data:`MAX_START_FAILURES` times in a row
  makes ``failed()`` report it (``telemetry run`` then stops with exit 1).
* ``stop(timeout)`` sends SIGTERM to every worker (each drains in-flight
  requests and finishes its spool file), waits, kills what is left after
  ``timeout`` and finishes their files.

Workers stay in the supervisor's process group but ignore SIGINT, so Ctrl-C
in a terminal reaches the supervisor only and shuts down in order; a worker
whose supervisor disappears stops by itself.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from .node_metrics import SupervisorStats, snapshot_path, write_document
from ..metrics.node import clear_members
from .worker import WorkerRecipe
from ..engine import Engine
from ..errors import ConfigError
from ..store.spool.files import finish_orphans
from ..store.spool.writer_plugin import spool_dir
from ..supervision import describe_exit

__all__ = ["BACKOFF_INITIAL_S", "MAX_START_FAILURES", "EdgeService", "EdgeStartError", "worker_count"]

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.5
MAX_START_FAILURES = 5
MONITOR_INTERVAL_S = 0.1


class EdgeStartError(ConfigError):
    """The edge could not start (port in use, a worker that cannot start ...); the message says why.

    A :class:`~telemetry_core.errors.ConfigError`, so every command reports it
    as one line and exits 2: it is fixed by changing the configuration (or
    freeing the port), not by retrying.
    """


def worker_count(config: Any) -> int:
    """``receive.workers``, with ``auto`` = the number of CPU cores."""
    configured = config["receive"]["workers"]
    return (os.cpu_count() or 1) if configured == "auto" else int(configured)


@dataclass
class _Slot:
    """One worker position: the current process (if any) and its restart bookkeeping."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    quick_deaths: int = 0
    start_failures: int = 0
    restart_at: float | None = None


def spawn_child(module: str, recipe: bytes) -> subprocess.Popen[bytes]:
    """Start ``python -m module`` with ``recipe`` on its stdin (then closed) and its
    stdout piped for status lines.  A child that dies at once is not an error
    here: its status line or exit code says why."""
    process = subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               close_fds=True)
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write(recipe)
        process.stdin.close()
    except BrokenPipeError:
        pass  # it died at once; seen like any other exit
    return process


class EdgeService:
    """Supervises the edge's worker processes; see the module docstring."""

    name = "edge"

    def __init__(self, engine: Engine, *, workers: int | None = None, port: int | None = None,
                 takeover: bool = False, node_pid: int | None = None) -> None:
        self.engine = engine
        config = engine.config
        receive = config["receive"]
        self.host: str = receive["host"]
        self.port: int = receive["port"] if port is None else port
        #: Whether the port may already have listeners: workers of this node's earlier
        #: supervisor that still serve while this one starts (``telemetry run`` checked the port).
        self.takeover = takeover
        #: The ``telemetry run`` process that restarts this supervisor (``None`` under ``serve``).
        self.node_pid = node_pid
        self.workers = workers if workers is not None else worker_count(config)
        self.backlog = receive["backlog"]
        self.start_timeout_s = float(receive["start_timeout_s"])
        self.backoff_max_s = float(receive["restart_backoff_max_s"])
        self.drain_timeout_s = float(receive["drain_timeout_s"])
        self.spool_dir = spool_dir(config)
        self.metrics_dir = config.data_dir / "metrics"
        self.stats = SupervisorStats()
        self._slots = [_Slot(index) for index in range(self.workers)]
        self._reservation: socket.socket | None = None
        self._monitor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._failure: str | None = None

    # ------------------------------------------------------------------ Service protocol

    def start(self) -> None:
        """Start every worker and return once all accept connections (raises :class:`EdgeStartError`)."""
        node_id = self.engine.node_id
        moved = finish_orphans(self.spool_dir)
        if moved:
            log.info("finished %d spool file(s) left open by an earlier run", len(moved))
        self._clear_stale_snapshots(node_id)
        self._reservation, self.port = _reserve_port(self.host, self.port, probe=not self.takeover)
        self.stats.stats.workers = self.workers
        try:
            for slot in self._slots:
                self._spawn(slot)
            deadline = time.monotonic() + self.start_timeout_s
            for slot in self._slots:
                if not self._await_ready(slot, deadline):
                    code = slot.process.poll() if slot.process is not None else None
                    reason = slot.error or (f"exited with {describe_exit(code)}" if code is not None else
                                            f"did not start listening within {self.start_timeout_s:g} s")
                    raise EdgeStartError(f"edge worker {slot.index} could not start: {reason}")
        except BaseException:
            self._stop_workers(timeout=5.0)
            self._release()
            raise
        self._publish()
        pids = ", ".join(str(slot.process.pid) for slot in self._slots if slot.process)
        log.info("edge listening on %s with %d worker(s) (pids %s)", self.url, self.workers, pids)
        self._monitor = threading.Thread(target=self._watch, name="edge-supervisor", daemon=True)
        self._monitor.start()

    def stop(self, timeout: float) -> None:
        """SIGTERM every worker, wait up to ``timeout`` seconds, kill the rest; finish their spool files."""
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5.0)
        self._stop_workers(timeout)
        moved = finish_orphans(self.spool_dir)
        if moved:
            log.warning("finished %d spool file(s) of workers that did not stop in time", len(moved))
        self._publish()
        self._release()

    def failed(self) -> str | None:
        return self._failure

    # ------------------------------------------------------------------ facts

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def worker_pids(self) -> list[int | None]:
        """The pid of each worker position (``None`` while it waits to be restarted)."""
        with self._lock:
            return [slot.process.pid if slot.process and slot.process.poll() is None else None
                    for slot in self._slots]

    # ------------------------------------------------------------------ workers

    def _spawn(self, slot: _Slot) -> None:
        recipe = WorkerRecipe.from_engine(self.engine, worker=slot.index, host=self.host, port=self.port,
                                          parent_pid=os.getpid(), node_pid=self.node_pid)
        process = spawn_child("telemetry_core.receive.worker", recipe.to_json())
        with self._lock:
            slot.process, slot.started_at, slot.error, slot.restart_at = process, time.monotonic(), None, None
            slot.ready = threading.Event()
        self.stats.stats.started += 1
        threading.Thread(target=_read_status, args=(process.stdout, slot, slot.ready),
                         name=f"edge-worker-{slot.index}-status", daemon=True).start()

    def _await_ready(self, slot: _Slot, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if slot.ready.wait(0.05):
                return True
            if slot.process is None or slot.process.poll() is not None:
                slot.ready.wait(0.2)  # let the status reader catch the worker's last line
                return slot.ready.is_set()
        return False

    def _watch(self) -> None:
        """The monitor thread: reap dead workers, restart them after their back-off.

        If supervising itself fails (e.g. a worker cannot be spawned), the
        service reports it through :meth:`failed` and stops supervising.
        """
        while not self._stopping.wait(MONITOR_INTERVAL_S):
            try:
                self._watch_once()
            except Exception as error:  # noqa: BLE001 - reported as the service's failure
                log.exception("the edge supervisor failed")
                self._failure = f"the edge supervisor failed: {error}"
                return

    def _watch_once(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            process = slot.process
            if process is not None and process.poll() is not None:
                self._reap(slot, process, now)
            elif process is not None and not slot.ready.is_set() and now - slot.started_at > self.start_timeout_s:
                log.error("edge worker %d (pid %d) did not start within %g s; killing it",
                          slot.index, process.pid, self.start_timeout_s)
                slot.error = slot.error or f"did not start listening within {self.start_timeout_s:g} s"
                process.kill()
            elif process is None and slot.restart_at is not None and now >= slot.restart_at \
                    and not self._stopping.is_set():
                self._spawn(slot)
                self.stats.stats.restarts += 1

    def _reap(self, slot: _Slot, process: subprocess.Popen[bytes], now: float) -> None:
        lived = now - slot.started_at
        was_ready = slot.ready.is_set()
        with self._lock:
            slot.process = None
        self.stats.stats.exits += 1
        moved = finish_orphans(self.spool_dir)
        if was_ready:
            slot.start_failures = 0
            slot.quick_deaths = 0 if lived >= self.backoff_max_s else slot.quick_deaths + 1
        else:
            slot.start_failures += 1
            slot.quick_deaths += 1
            self.stats.stats.start_failures += 1
        if slot.start_failures >= MAX_START_FAILURES:
            self._failure = (f"edge worker {slot.index} failed to start {slot.start_failures} times in a row: "
                             f"{slot.error or f'exit code {process.returncode}'}")
            log.error("%s; not restarting it", self._failure)
            self._publish()
            return
        delay = 0.0 if slot.quick_deaths == 0 else min(BACKOFF_INITIAL_S * 2 ** (slot.quick_deaths - 1),
                                                       self.backoff_max_s)
        slot.restart_at = now + delay
        log.warning("edge worker %d (pid %d) exited with %s after %.1f s%s; restarting in %.1f s",
                    slot.index, process.pid, describe_exit(process.returncode), lived,
                    f", finished {len(moved)} spool file(s)" if moved else "", delay)
        self._publish()

    def _stop_workers(self, timeout: float) -> None:
        with self._lock:
            processes = [slot.process for slot in self._slots if slot.process is not None]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("edge worker pid %d did not stop within %g s; killing it", process.pid, timeout)
                process.kill()
                process.wait()
        for process in processes:
            if process.returncode not in (0, None):
                log.warning("edge worker pid %d exited with %s", process.pid, describe_exit(process.returncode))

    # ------------------------------------------------------------------ bookkeeping

    def _release(self) -> None:
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None

    def _publish(self) -> None:
        path = snapshot_path(self.metrics_dir, self.engine.node_id, "supervisor")
        document = {"command": path.stem, "node_id": self.engine.node_id, "pid": os.getpid(), "member": "supervisor",
                    "written_at": time.time(), "port": self.port, "stats": self.stats.tree()}
        try:
            write_document(path, document)
        except OSError as error:
            log.warning("cannot publish edge supervisor metrics to %s: %s", path, error)

    def _clear_stale_snapshots(self, node_id: str) -> None:
        """Remove worker snapshots of an earlier run (their pids may have been reused since)."""
        clear_members(self.metrics_dir, node_id, "worker-*")


def _read_status(stream: IO[bytes], slot: _Slot, ready: threading.Event) -> None:
    """Read a worker's status lines (``ready`` / ``error <message>``) until it closes stdout."""
    with stream:
        for line in stream:
            text = line.decode("utf-8", "replace").strip()
            if text == "ready":
                ready.set()
            elif text.startswith("error "):
                slot.error = text[6:]
            elif text:
                log.debug("edge worker %d printed: %s", slot.index, text[:200])


def _reserve_port(host: str, port: int, *, probe: bool = True) -> tuple[socket.socket, int]:
    """Check that ``host:port`` is free (unless ``probe`` is false) and hold it (bound, not
    listening) for the workers."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    if probe:
        port = _probe_port(family, kind, proto, address, host, port)
    reservation = socket.socket(family, kind, proto)
    try:
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind((address[0], port, *address[2:]))
    except OSError as error:
        reservation.close()
        raise EdgeStartError(f"cannot reserve {host}:{port}: {error.strerror}; set another receive.port") from None
    return reservation, port


def _probe_port(family: int, kind: int, proto: int, address: Any, host: str, port: int) -> int:
    """Fail with :class:`EdgeStartError` when anything listens on the port; the port bound
    (``receive.port: 0`` resolves to a free one)."""
    probe = socket.socket(family, kind, proto)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT of an earlier run
        probe.bind(address)  # without SO_REUSEPORT: fails if anything listens on the port
        port = probe.getsockname()[1]
    except OSError as error:
        raise EdgeStartError(f"cannot listen on {host}:{port}: {error.strerror}; stop what uses it or set "
                             f"another receive.port") from None
    finally:
        probe.close()
    return port
