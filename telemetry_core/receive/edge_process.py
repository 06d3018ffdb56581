"""The edge supervisor in a process of its own, so ``telemetry run`` can restart it.

``telemetry run`` starts :class:`EdgeProcessService` (the ``edge`` service).
It checks that ``receive.host:receive.port`` is free (and resolves port 0)
once, holds the port for the whole run, and starts
``python -m telemetry_core.receive.edge_process`` with an
:class:`EdgeRecipe` (JSON) on its stdin.  That process runs an
:class:`~telemetry_core.receive.supervisor.EdgeService` (which starts and
restarts the edge workers), prints ``ready`` once every worker accepts, and
runs until SIGTERM, until its own parent is gone, or until the edge fails.

When the edge supervisor process dies (SIGKILL, OOM ...), its workers keep
serving (see :mod:`telemetry_core.receive.worker`) while ``telemetry run``
starts a new supervisor, for as long as ``telemetry run`` lives (without it,
up to ``receive.orphan_grace_s``); that one binds the same port (``SO_REUSEPORT``) without asking
the old workers to leave, and the old workers stop once it is ready.  The
node keeps accepting throughout.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from ..errors import TelemetryError
from ..redaction import redact
from ..supervision import describe_exit

__all__ = ["EdgeProcessService", "EdgeRecipe", "main"]

log = logging.getLogger(__name__)

EXIT_START_FAILED, EXIT_FAILED = 2, 1


@dataclass
class EdgeRecipe:
    """What the edge supervisor process needs: the parent's validated config, and the port."""

    config: dict[str, Any]
    source: str
    base_dir: str
    port: int
    parent_pid: int
    secret_keys: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, text: str | bytes) -> "EdgeRecipe":
        return cls(**json.loads(text))


class EdgeProcessService:
    """The ``edge`` service of ``telemetry run``: the edge supervisor as a child process."""

    name = "edge"

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        receive = engine.config["receive"]
        self.host: str = receive["host"]
        self.port: int = receive["port"]
        self.start_timeout_s = float(receive["start_timeout_s"])
        self.drain_timeout_s = float(receive["drain_timeout_s"])
        self.process: subprocess.Popen[bytes] | None = None
        self._reservation: Any = None

    def start(self) -> None:
        """Start the edge supervisor process; return once its workers accept (or raise
        :class:`~telemetry_core.receive.supervisor.EdgeStartError` with its reason)."""
        from .supervisor import EdgeStartError, _reserve_port, spawn_child

        if self._reservation is None:  # the first start: the port must be free
            self._reservation, self.port = _reserve_port(self.host, self.port)
        config = self.engine.config
        recipe = EdgeRecipe(config=copy.deepcopy(config.data), source=config.source, base_dir=str(config.base_dir),
                            port=self.port, parent_pid=os.getpid(), secret_keys=sorted(config.secret_keys))
        process = spawn_child("telemetry_core.receive.edge_process", recipe.to_json())
        self.process = process
        status = _first_status(process.stdout, self.start_timeout_s * 2 + 10.0)
        if status != "ready":
            self._kill()
            reason = status[6:] if status and status.startswith("error ") else \
                f"the edge supervisor did not start (exit {process.poll()})"
            raise EdgeStartError(redact(reason))
        threading.Thread(target=_drain, args=(process.stdout,), name="edge-process-status", daemon=True).start()

    def stop(self, timeout: float) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=max(timeout, self.drain_timeout_s + 10.0))
        except subprocess.TimeoutExpired:
            log.error("the edge supervisor (pid %d) did not stop in time; killing it", process.pid)
            self._kill()

    def failed(self) -> str | None:
        process = self.process
        if process is not None and process.poll() is not None:
            return f"the edge supervisor (pid {process.pid}) exited with {describe_exit(process.returncode)}"
        return None

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait()


def _first_status(stream: IO[bytes], timeout: float) -> str | None:
    """The first status line (``ready`` or ``error ...``) of the child, or ``None``."""
    found: list[str] = []

    def read() -> None:
        for line in stream:
            text = line.decode("utf-8", "replace").strip()
            if text == "ready" or text.startswith("error "):
                found.append(text)
                return

    reader = threading.Thread(target=read, name="edge-process-start", daemon=True)
    reader.start()
    reader.join(timeout)
    return found[0] if found else None


def _drain(stream: IO[bytes]) -> None:
    with stream:
        for _ in stream:
            pass


def main() -> int:
    """Entry point of the edge supervisor process (``python -m telemetry_core.receive.edge_process``)."""
    from ..commands import finish
    from .supervisor import EdgeService
    from .worker import engine_from_config_data

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # telemetry run owns the terminal
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    status = sys.stdout
    try:
        recipe = EdgeRecipe.from_json(sys.stdin.buffer.read())
        engine = engine_from_config_data(recipe.config, source=recipe.source, base_dir=recipe.base_dir,
                                         secret_keys=recipe.secret_keys)
    except (TelemetryError, OSError, ValueError, TypeError) as error:
        status.write(f"error {' '.join(redact(error).split())}\n")
        status.flush()
        return EXIT_START_FAILED
    engine.startup(command="edge")
    service = EdgeService(engine, port=recipe.port, takeover=True, node_pid=recipe.parent_pid)
    code = 0
    try:
        try:
            service.start()
        except (TelemetryError, OSError) as error:
            status.write(f"error {' '.join(redact(error).split())}\n")
            status.flush()
            return EXIT_START_FAILED
        status.write("ready\n")
        status.flush()
        while not stop.wait(0.2):
            if os.getppid() != recipe.parent_pid:
                log.warning("the edge supervisor's parent (pid %d) is gone; stopping", recipe.parent_pid)
                break
            failure = service.failed()
            if failure:
                log.error("%s; the edge supervisor stops", failure)
                code = EXIT_FAILED
                break
    finally:
        service.stop(timeout=service.drain_timeout_s + 10.0)
        finish(engine, "edge")
    return code


if __name__ == "__main__":
    from telemetry_core.receive.edge_process import main as _main

    sys.exit(_main())
