"""One edge worker: an aiohttp server on a ``SO_REUSEPORT`` socket, its own engine and spool writer.

The supervisor (:mod:`telemetry_core.receive.supervisor`) starts each worker as
``python -m telemetry_core.receive.worker`` and writes a :class:`WorkerRecipe`
(JSON) to its stdin.  The worker

1. rebuilds the engine in this process from the recipe's config (the
   parent's validated configuration: the same values, plugins loaded afresh,
   ``telemetry_configure`` and ``telemetry_startup`` called here), opens its
   own spool writer (``telemetry_store_spool_writer``; file names carry the
   node id and this pid) and binds its own listening socket to the shared
   port;
2. prints ``ready`` on stdout once it accepts connections (or ``error
   <message>`` and exits 2 when it cannot start);
3. every half second: lets the writer rotate/sync (``poll``), re-checks disk
   and spool health, publishes its metrics snapshot every
   ``receive.metrics_interval_s``; if its supervisor is gone it keeps serving
   until a new supervisor of the node is ready or ``receive.orphan_grace_s``
   passed, then stops as on SIGTERM;
4. on SIGTERM (SIGINT is ignored: the supervisor owns the terminal): stops
   accepting, waits up to ``receive.drain_timeout_s`` for in-flight
   requests, finishes its spool file (atomic rename into ``finished/``),
   calls ``telemetry_shutdown`` and exits 0.

:class:`EdgeWorker` is the same worker without the process around it
(tests run it in a thread).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..config.loader import RawConfig
from .app import EdgeHandlers, EdgeRunner, EdgeSettings, EdgeState, build_app, runner_options
from .health import SpoolHealth
from .node_metrics import EdgeStats, NodeMetrics, snapshot_path
from .spool_thread import SpoolThread
from ..engine import Engine
from ..errors import TelemetryError
from ..plugins import load_plugins, make_plugin_manager
from ..profiling import profiled
from ..store.spool.files import SpoolError, process_alive

__all__ = ["EXIT_START_FAILED", "EdgeWorker", "WorkerRecipe", "engine_from_config_data", "main", "open_listener"]

log = logging.getLogger(__name__)

EXIT_START_FAILED = 2
#: Seconds between the worker's housekeeping rounds (spool poll, health, parent check).
TICK_S = 0.5


@dataclass
class WorkerRecipe:
    """Everything a worker process needs, sent as JSON on its stdin.

    ``config`` is the parent's *validated* configuration data (defaults
    filled, paths absolute, ``${VAR}`` already expanded), so every worker
    runs exactly what the parent checked, even if the file changed since.
    """

    config: dict[str, Any]
    source: str
    base_dir: str
    worker: int
    host: str
    port: int
    parent_pid: int | None = None
    secret_keys: list[str] = field(default_factory=list)
    #: The ``telemetry run`` process that restarts the supervisor, if any: while it lives,
    #: a worker whose supervisor died keeps serving until a new supervisor is ready.
    node_pid: int | None = None

    @classmethod
    def from_engine(cls, engine: Engine, *, worker: int, host: str, port: int,
                    parent_pid: int | None = None, node_pid: int | None = None) -> "WorkerRecipe":
        config = engine.config
        return cls(config=copy.deepcopy(config.data), source=config.source, base_dir=str(config.base_dir),
                   worker=worker, host=host, port=port, parent_pid=parent_pid, node_pid=node_pid,
                   secret_keys=sorted(config.secret_keys))

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, text: str | bytes) -> "WorkerRecipe":
        return cls(**json.loads(text))


def engine_from_config_data(data: dict[str, Any], *, source: str, base_dir: str | os.PathLike[str],
                            secret_keys: list[str] = (), configure_logs: bool = True) -> Engine:
    """Build an engine in this process from validated config data, loading plugins as
    :meth:`Engine.from_config` does (disabled blocked, entry points, built-ins, ``plugins.load``)."""
    raw = RawConfig(data=copy.deepcopy(data), source=source, base_dir=Path(base_dir),
                    secret_keys=set(secret_keys))
    disabled, load, skip_broken = raw.plugin_selection()
    pm = make_plugin_manager()
    infos = load_plugins(pm, disabled=disabled, load=load, skip_broken=skip_broken)
    return Engine.from_plugin_manager(pm, raw, plugins=infos, disabled=disabled, configure_logs=configure_logs)


def open_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket with ``SO_REUSEPORT``, so every worker of a node binds the same port."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class BadRequestCounter(logging.Filter):
    """Counts requests aiohttp's HTTP parser refused (400) as ``edge/rejected/bad_request``
    instead of logging a traceback for each: malformed input is the client's problem, and
    logging every one would let any client flood the logs."""

    def __init__(self, stats: EdgeStats) -> None:
        super().__init__("aiohttp.server")
        self.stats = stats

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            self.stats.reject("bad_request")
            self.stats.responses[str(error.code or 400)] += 1
            return False
        return True


class AcceptErrorLog:
    """The event loop's exception handler: ``socket.accept() out of system resource``
    (EMFILE, ENFILE, ENOBUFS, ENOMEM) is logged as one line every ``interval_s`` seconds
    with how many times it happened, instead of a traceback per failed accept.

    asyncio itself backs off: it stops watching the listening socket and tries
    again a second later.  Every other error goes to the loop's default handler.
    """

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, worker: int, interval_s: float = 10.0) -> None:
        self.worker = worker
        self.interval_s = interval_s
        self.count = 0
        self.unreported = 0
        self._last_logged: float | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != self.MESSAGE:
            loop.default_exception_handler(context)
            return
        self.count += 1
        self.unreported += 1
        now = time.monotonic()
        if self._last_logged is None or now - self._last_logged >= self.interval_s:
            error = context.get("exception")
            since = "" if self._last_logged is None else f" in the last {now - self._last_logged:.0f} s"
            log.error("edge worker %d cannot accept connections: %s (%d time(s)%s); it retries every second. "
                      "Raise the open-file limit (ulimit -n / LimitNOFILE) or lower receive.backlog",
                      self.worker, getattr(error, "strerror", None) or error, self.unreported, since)
            self._last_logged, self.unreported = now, 0


class EdgeWorker:
    """Serves one listening socket until asked to stop; see the module docstring."""

    def __init__(self, engine: Engine, worker: int = 0, *, parent_pid: int | None = None,
                 node_pid: int | None = None) -> None:
        self.engine = engine
        self.worker = worker
        self.parent_pid = parent_pid
        self.node_pid = node_pid
        config = engine.config
        self.settings = EdgeSettings.from_config(config)
        self.metrics_interval_s = float(config["receive"]["metrics_interval_s"])
        self.min_free_disk_bytes = int(config["receive"]["min_free_disk_bytes"])
        self.metrics_dir = config.data_dir / "metrics"
        self.state = EdgeState()
        self.handlers: EdgeHandlers | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._publish_failed = False
        self.orphan_grace_s = float(config["receive"]["orphan_grace_s"])
        self._orphaned_at: float | None = None

    def request_stop(self) -> None:
        """Ask the worker to drain and stop; safe from any thread or a signal handler."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)

    async def serve(self, sock: socket.socket, on_ready: Callable[[], None] | None = None) -> None:
        """Serve ``sock`` until :meth:`request_stop`; then drain, finish the spool file and return."""
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(AcceptErrorLog(self.worker))
        self._stop = asyncio.Event()
        engine = self.engine
        writer = engine.spool_writer(worker=self.worker)
        stats = EdgeStats()
        stats.watch_spool(getattr(writer, "stats", None))
        directory = getattr(writer, "open_dir", None)
        health = SpoolHealth(Path(directory) if directory is not None else None, self.min_free_disk_bytes)
        metrics = NodeMetrics(self.metrics_dir, engine.node_id, self.worker, refresh=stats.sync,
                              data_dir=engine.config.data_dir)
        spool = SpoolThread(writer)
        housekeeping: asyncio.Task[None] | None = None
        runner: web.AppRunner | None = None
        bad_requests = BadRequestCounter(stats)
        logging.getLogger("aiohttp.server").addFilter(bad_requests)
        try:
            self.handlers = handlers = EdgeHandlers(engine, spool, settings=self.settings, state=self.state,
                                                    stats=stats, health=health, metrics=metrics,
                                                    worker=self.worker)
            runner = EdgeRunner(build_app(handlers, engine.receive_routes()), **runner_options(self.settings))
            await runner.setup()
            await web.SockSite(runner, sock).start()
            self.state.ready = True
            metrics.retire_predecessor()  # a restarted worker's counters go on from its predecessor's
            self._publish(metrics)
            log.info("edge worker %d (pid %d) accepting on %s", self.worker, os.getpid(), _address(sock))
            if on_ready is not None:
                on_ready()
            housekeeping = asyncio.create_task(self._housekeeping(spool, stats, health, metrics))
            await self._stop.wait()
            self.state.draining = True
            log.info("edge worker %d draining (%d requests in flight)", self.worker, self.state.in_flight)
        finally:
            if runner is not None:
                await runner.cleanup()  # stop accepting; wait up to drain_timeout_s for in-flight requests
            if housekeeping is not None:
                housekeeping.cancel()
                await asyncio.gather(housekeeping, return_exceptions=True)
            finished = None
            try:
                finished = await spool.close()
            except SpoolError as error:  # the file stays in open/; finish_orphans moves it later
                log.error("could not finish the spool file: %s", error)
            self._publish(metrics)
            logging.getLogger("aiohttp.server").removeFilter(bad_requests)
            log.info("edge worker %d stopped%s", self.worker, f"; finished {finished}" if finished else "")

    async def _housekeeping(self, spool: SpoolThread, stats: EdgeStats, health: SpoolHealth,
                            metrics: NodeMetrics) -> None:
        loop = asyncio.get_running_loop()
        next_publish = time.monotonic() + self.metrics_interval_s
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await spool.poll()
            except SpoolError as error:
                health.write_failed(str(error))
                log.error("spool housekeeping failed: %s", error)
            health.refresh()
            stats.in_flight = self.state.in_flight
            if time.monotonic() >= next_publish:
                next_publish = time.monotonic() + self.metrics_interval_s
                document = metrics.own_document()
                await loop.run_in_executor(None, self._publish, metrics, document)
            if self.parent_pid is not None and os.getppid() != self.parent_pid and self._orphaned_done():
                self._stop.set()

    def _orphaned_done(self) -> bool:
        """Whether a worker whose supervisor died should stop now: once a new supervisor of
        this node is ready (its snapshot names another live pid), or, unless the ``telemetry
        run`` that restarts supervisors still runs, after ``receive.orphan_grace_s``."""
        now = time.time()
        restarter = self.node_pid is not None and process_alive(self.node_pid)
        if self._orphaned_at is None:
            self._orphaned_at = now
            log.warning("edge worker %d: the supervisor (pid %d) is gone; serving %s while a new one starts",
                        self.worker, self.parent_pid,
                        "on" if restarter else f"up to {self.orphan_grace_s:g} s more")
        if not restarter and now - self._orphaned_at >= self.orphan_grace_s:
            log.warning("edge worker %d: no new supervisor within %g s; stopping", self.worker, self.orphan_grace_s)
            return True
        try:
            document = json.loads(snapshot_path(self.metrics_dir, self.engine.node_id, "supervisor").read_text())
            pid, written_at = int(document["pid"]), float(document["written_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if pid == self.parent_pid or written_at < self._orphaned_at or not process_alive(pid):
            return False
        log.info("edge worker %d: a new supervisor (pid %d) is ready; stopping", self.worker, pid)
        return True

    def _publish(self, metrics: NodeMetrics, document: dict[str, Any] | None = None) -> None:
        try:
            metrics.publish(document)
        except OSError as error:
            if not self._publish_failed:
                log.warning("cannot publish edge metrics to %s: %s; /status shows this worker only",
                            metrics.path, error)
            self._publish_failed = True
        else:
            self._publish_failed = False


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def main() -> int:
    """Entry point of a worker process (``python -m telemetry_core.receive.worker``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    status = sys.stdout
    try:
        recipe = WorkerRecipe.from_json(sys.stdin.buffer.read())
        engine = engine_from_config_data(recipe.config, source=recipe.source, base_dir=recipe.base_dir,
                                         secret_keys=recipe.secret_keys)
        sock = open_listener(recipe.host, recipe.port, engine.config["receive"]["backlog"])
    except (TelemetryError, OSError, ValueError, TypeError) as error:
        status.write(f"error {' '.join(str(error).split())}\n")
        status.flush()
        return EXIT_START_FAILED
    worker = EdgeWorker(engine, recipe.worker, parent_pid=recipe.parent_pid, node_pid=recipe.node_pid)

    def ready() -> None:
        status.write("ready\n")
        status.flush()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, worker.request_stop)
        await worker.serve(sock, on_ready=ready)

    engine.worker = recipe.worker
    engine.process_label = f"worker-{recipe.worker}"
    with profiled(engine.process_label):  # when the node runs with --profile
        engine.startup(command="edge-worker")
        try:
            asyncio.run(run())
        except (TelemetryError, OSError) as error:
            status.write(f"error {' '.join(str(error).split())}\n")
            status.flush()
            log.error("edge worker %d failed: %s", recipe.worker, error)
            return EXIT_START_FAILED
        finally:
            engine.shutdown(command="edge-worker")
            sock.close()
    return 0


if __name__ == "__main__":
    # Run as ``python -m``: use the imported module so loggers carry its real name.
    from telemetry_core.receive.worker import main as _main

    sys.exit(_main())
