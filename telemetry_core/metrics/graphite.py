"""Built-in plugin: push every metric to Graphite (carbon plaintext protocol).

Off unless ``metrics.graphite`` is set.  Started by ``telemetry_startup``
for every command that uses the engine, it sends
``<prefix>.<node id>.<stat path> <value> <timestamp>`` lines every
``interval`` seconds from a daemon thread, and once more at
``telemetry_shutdown`` so one-shot commands report too.  A Graphite that is
down costs a logged warning per interval, never the pipeline.

Each process pushes its own stats.  An edge worker process pushes under
``<prefix>.<node id>.worker-<n>.``, a processor worker under
``<prefix>.<node id>.processor-<n>.``, so the processes of one node do not
overwrite each other's series (add them up with ``sumSeries``); the
parent of ``telemetry serve`` / ``run`` pushes under ``<prefix>.<node id>.``.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from typing import Any

from ..hookspecs import hookimpl
from .stats import counter_stats, flatten, snapshot

log = logging.getLogger(__name__)
_SAFE = re.compile(r"[^A-Za-z0-9_-]")


class GraphitePusher:
    """Sends the current stats to carbon every ``interval`` seconds."""

    def __init__(self, host: str, port: int, prefix: str, node_id: str, interval: float,
                 timeout: float = 5.0, worker: int | None = None, process: str | None = None) -> None:
        self.address = (host, port)
        if process is None and worker is not None:
            process = f"worker-{worker}"
        self.prefix = f"{prefix}.{_SAFE.sub('_', node_id)}" + (f".{_SAFE.sub('_', process)}" if process else "")
        self.interval = interval
        self.timeout = timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = counter_stats("/graphite", "pushes", "failures", "lines")

    def lines(self, now: float | None = None) -> list[str]:
        stamp = int(now if now is not None else time.time())
        out = []
        for parts, value in flatten(snapshot()):
            path = ".".join(_SAFE.sub("_", part) for part in parts if part)
            out.append(f"{self.prefix}.{path} {value:g} {stamp}")
        return out

    def push(self) -> bool:
        """Send one round; return whether it reached carbon."""
        payload = ("\n".join(self.lines()) + "\n").encode()
        try:
            with socket.create_connection(self.address, timeout=self.timeout) as connection:
                connection.sendall(payload)
        except OSError as exc:
            self.stats.failures += 1
            log.warning("could not push metrics to graphite at %s:%d: %s", *self.address, exc)
            return False
        self.stats.pushes += 1
        self.stats.lines += payload.count(b"\n")
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="graphite-pusher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.push()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1)
        self.push()


class GraphitePlugin:
    """The built-in ``metrics.graphite`` plugin: one pusher per engine, while a command runs."""

    def __init__(self) -> None:
        self.pusher: GraphitePusher | None = None

    @hookimpl
    def telemetry_startup(self, engine: Any, command: str) -> None:
        settings = engine.config.get("metrics.graphite")
        if not settings:
            return
        self.pusher = GraphitePusher(settings["host"], settings["port"], settings["prefix"], engine.node_id,
                                     settings["interval"], worker=engine.worker,
                                     process=getattr(engine, "process_label", None))
        self.pusher.start()
        log.info("pushing metrics to graphite at %s:%d every %gs", settings["host"], settings["port"],
                 settings["interval"])

    @hookimpl
    def telemetry_shutdown(self, engine: Any, command: str) -> None:
        pusher, self.pusher = self.pusher, None
        if pusher is not None:
            pusher.stop()
