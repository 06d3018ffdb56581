"""Helpers for the edge tests: a worker serving in a thread, real subprocess nodes, HTTP helpers.

* :class:`ThreadedEdge` runs one :class:`~telemetry_core.receive.worker.EdgeWorker`
  (real engine with the built-in plugins, real spool writer, real aiohttp
  server) on a free loopback port in a thread of the test process;
* :class:`EdgeNode` runs ``telemetry serve`` (supervisor + worker
  processes) as a subprocess, logging to a file;
* :func:`post` / :func:`get` are plain ``http.client`` requests;
  :func:`raw_exchange` sends exact bytes on a socket for what http.client
  will not send (no Content-Length, truncated bodies ...).
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from telemetry_core.receive.worker import EdgeWorker, open_listener
from telemetry_core.engine import Engine
from telemetry_core.store.spool.files import SpoolReader

REPO = Path(__file__).resolve().parent.parent
FIXTURE_LOG = REPO / "tests" / "fixtures" / "payload_v1_packed_log__telemetry1.log"
TELEMETRY = str(Path(sys.executable).parent / "telemetry")
DIMS = "idle-daily/Firefox/23.0.1/release/20130814063812"


def fixture_ping() -> tuple[str, bytes]:
    """The fixture's path and its body as received in 2013 (gzip)."""
    (record,) = SpoolReader(FIXTURE_LOG)
    return record.path, record.body


def new_id() -> str:
    return str(uuid.uuid4())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Answer:
    """An HTTP answer: status, headers (lower-case names) and body."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body[:200]!r})"


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 10.0) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST") -> Answer:
    return request(port, method, path, body, headers)


def get(port: int, path: str) -> Answer:
    return request(port, "GET", path)


def raw_exchange(port: int, data: bytes, *, pause_after: float = 0.0, more: bytes = b"",
                 read_timeout: float = 10.0, shutdown_write: bool = False) -> bytes:
    """Send ``data`` (then ``more`` after ``pause_after`` s) and return everything read until close or timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(data)
        if pause_after:
            time.sleep(pause_after)
        if more:
            sock.sendall(more)
        if shutdown_write:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
        except (socket.timeout, ConnectionResetError):
            pass
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def status_of(raw: bytes) -> int | None:
    if not raw.startswith(b"HTTP/1."):
        return None
    return int(raw.split(b" ", 2)[1])


def spool_records(data_dir: Path) -> list[Any]:
    """Every record in every spool file (open and finished) under ``data_dir/spool``."""
    records = []
    for area in ("finished", "open"):
        for path in sorted((data_dir / "spool" / area).glob("*.spool")):
            records.extend(SpoolReader(path))
    return records


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, 6)


class ThreadedEdge:
    """One edge worker serving in a thread of the test process (see the module docstring)."""

    def __init__(self, tmp_path: Path, overrides: Iterable[str] = ()) -> None:
        self.data_dir = tmp_path / "data"
        self.engine = Engine.from_config(None, [f"data_dir={self.data_dir}", "node_id=test-node",
                                                "receive.metrics_interval_s=0.2", *overrides],
                                         configure_logs=False)
        self.sock = open_listener("127.0.0.1", 0, 128)
        self.port = self.sock.getsockname()[1]
        self.worker = EdgeWorker(self.engine, 0)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edge-under-test", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self.worker.serve(self.sock, on_ready=self._ready.set))
        except BaseException as error:  # noqa: BLE001 - reported to the test by start()/stop()
            self._error = error
            self._ready.set()

    def start(self) -> "ThreadedEdge":
        self._thread.start()
        assert self._ready.wait(10), "the edge worker did not start"
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        self.worker.request_stop()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the edge worker did not stop"
        if self._error is not None:
            raise self._error

    @property
    def stats(self) -> Any:
        assert self.worker.handlers is not None
        return self.worker.handlers.stats

    def rejected(self) -> dict[str, int]:
        return dict(self.stats.rejected)

    def records(self) -> list[Any]:
        return spool_records(self.data_dir)


class EdgeNode:
    """``telemetry serve`` as a subprocess: a real supervisor with real worker processes."""

    def __init__(self, directory: Path, *, node_id: str = "node-a", port: int | None = None,
                 overrides: Iterable[str] = (), env: dict[str, str] | None = None,
                 preexec_fn: Any = None, config_text: str | None = None) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.data_dir = directory / "data"
        self.node_id = node_id
        self.port = port if port is not None else free_port()
        self.log_path = directory / "serve.log"
        self.config = directory / "node.yaml"
        self.config.write_text(config_text or (
            f"node_id: {node_id}\ndata_dir: {self.data_dir}\n"
            f"receive:\n  host: 127.0.0.1\n  port: {self.port}\n  workers: 1\n  metrics_interval_s: 0.2\n"))
        self.overrides = list(overrides)
        self.env = {**os.environ, **(env or {})}
        self.preexec_fn = preexec_fn
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True, command: str = "serve", extra_args: Iterable[str] = ()) -> "EdgeNode":
        args = [TELEMETRY, command, "--config", str(self.config), *extra_args]
        for override in self.overrides:
            args += ["--set", override]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=log, env=self.env, preexec_fn=self.preexec_fn,
                                        start_new_session=True)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"telemetry serve exited with {self.process.returncode}:\n{self.log()}")
            if "edge listening on" in self.log():
                return
            time.sleep(0.05)
        raise AssertionError(f"the edge did not start within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        """Pids of the supervisor's worker processes (its children)."""
        assert self.process is not None
        pids = []
        for children in Path(f"/proc/{self.process.pid}/task").glob("*/children"):  # every thread's children
            try:
                pids.extend(int(pid) for pid in children.read_text().split())
            except OSError:
                continue  # the thread ended meanwhile
        return sorted(pids)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"telemetry serve did not stop within {timeout} s:\n{self.log()}") from None

    def kill(self) -> None:
        """SIGKILL the supervisor and its workers at once (a node dying)."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)
