"""A real S3 API server for tests (moto's standalone server on loopback) and a
fault-injecting HTTP proxy to put between boto3 and it.

Import the fixtures into a test module::

    from s3_helpers import FaultProxy, fault_proxy, moto_endpoint, s3_client, bucket  # noqa: F401

Nothing here patches botocore: boto3 talks HTTP to 127.0.0.1, either to the
server directly or through the proxy, which forwards each request unless a
fault was armed for it.
"""

from __future__ import annotations

import gc
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config as BotoConfig

#: Parts this small are accepted by the test server (AWS requires 5 MiB), so multipart tests stay small.
TEST_PART_MIN = 1024
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "expect"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dead_endpoint() -> str:
    """An http URL on loopback where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"moto_server did not listen on port {port} within {timeout}s")


class MotoServer:
    """One ``moto_server`` process on a free loopback port, shared by every test module."""

    instance: "MotoServer | None" = None

    def __init__(self, log_path: Path) -> None:
        script = Path(sys.executable).parent / "moto_server"
        command = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
        env = {**os.environ, "S3_UPLOAD_PART_MIN_SIZE": str(TEST_PART_MIN),
               "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(16 * 1024 * 1024)}
        for attempt in range(3):
            port = free_port()
            with open(log_path, "ab") as log:
                self.process = subprocess.Popen([*command, "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                                stderr=subprocess.STDOUT, env=env)
            try:
                _wait_listening(port, self.process)
            except RuntimeError:
                self.stop()
                if attempt == 2:
                    raise
                continue
            break
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of ``moto_server`` on loopback, started once for the session.

    Each test module imports this fixture, which gives each module its own
    fixture definition; the server itself is shared through
    :attr:`MotoServer.instance` and stopped by the first teardown at the end.
    """
    if MotoServer.instance is None or MotoServer.instance.process.poll() is not None:
        MotoServer.instance = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    server = MotoServer.instance
    yield server.url
    server.stop()


@pytest.fixture(autouse=True)
def fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """boto3 reads credentials from the environment, as in production; these are fake.

    Afterwards, collect garbage: a dropped botocore client leaves weak proxies in
    reference cycles, and ``scales.reset()`` (run before every test) trips over
    them until the cycles are collected.
    """
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    yield
    gc.collect()


def direct_client(endpoint: str) -> Any:
    """A plain boto3 client for test setup and inspection (not the code under test)."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


@pytest.fixture
def s3_client(moto_endpoint: str) -> Any:
    return direct_client(moto_endpoint)


@pytest.fixture
def bucket(s3_client: Any) -> str:
    """A fresh, empty bucket per test."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    s3_client.create_bucket(Bucket=name)
    return name


# --------------------------------------------------------------------------- the fault proxy


@dataclass
class Fault:
    """One armed fault: applies to the next ``times`` requests that ``match``.

    ``action`` is ``status`` (answer ``status`` without forwarding), ``delay``
    (forward, then hold the answer ``seconds``), ``corrupt_request`` (flip a
    byte of the body before forwarding), ``corrupt_response`` (flip a byte of
    the answer's body), ``truncate_response`` (send the headers and half the
    body, then close), ``drop`` (close the connection without answering) or
    ``before`` (call ``before()``, then forward: e.g. another writer races us).
    """

    action: str
    times: int
    match: Callable[[str, str], bool]
    status: int = 500
    seconds: float = 0.0
    before: Callable[[], None] | None = None
    hits: int = 0


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    body_size: int
    fault: str | None = None


def is_part_upload(method: str, path: str) -> bool:
    query = urlsplit(path).query
    return method == "PUT" and "partNumber=" in query and "uploadId=" in query


def is_complete(method: str, path: str) -> bool:
    return method == "POST" and "uploadId=" in urlsplit(path).query


def is_object_get(method: str, path: str) -> bool:
    parts = urlsplit(path)
    return method == "GET" and parts.path.count("/") >= 2 and not parts.query.startswith("list-type")


class FaultProxy:
    """An HTTP proxy on loopback forwarding to an S3 API server, with faults armed by tests."""

    def __init__(self, upstream: str) -> None:
        parsed = urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.faults: list[Fault] = []
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                return

            def do_GET(self) -> None:
                proxy._handle(self)

            do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def arm(self, action: str, *, times: int = 1, match: Callable[[str, str], bool] | None = None,
            status: int = 500, seconds: float = 0.0, before: Callable[[], None] | None = None) -> Fault:
        """Arm a fault for the next ``times`` matching requests (default: every request matches)."""
        fault = Fault(action, times, match or (lambda method, path: True), status=status, seconds=seconds,
                      before=before)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.hits < fault.times and fault.match(method, path):
                    fault.hits += 1
                    return fault
        return None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        body = _read_body(handler)
        fault = self._take_fault(handler.command, handler.path)
        with self._lock:
            self.requests.append(SeenRequest(handler.command, handler.path, dict(handler.headers.items()),
                                             len(body), fault.action if fault else None))
        action = fault.action if fault else None
        if action == "drop":
            return
        if action == "status":
            assert fault is not None
            _send(handler, fault.status, {"Content-Type": "application/xml"}, _error_xml(fault.status),
                  head=handler.command == "HEAD")
            return
        if action == "before" and fault is not None and fault.before is not None:
            fault.before()
        if action == "corrupt_request" and body:
            body = _flip(body)
        status, headers, answer = self._forward(handler, body)
        if action == "delay":
            assert fault is not None
            time.sleep(fault.seconds)
        if action == "corrupt_response" and answer:
            answer = _flip(answer)
        if action == "truncate_response" and answer:
            headers["Content-Length"] = str(len(answer))
            _send(handler, status, headers, answer[: len(answer) // 2], head=False, exact_length=False)
            return
        _send(handler, status, headers, answer, head=handler.command == "HEAD")

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            connection.request(handler.command, handler.path, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            out = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP}
            return response.status, out, answer
        finally:
            connection.close()


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def _send(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes, *,
          head: bool, exact_length: bool = True) -> None:
    """Answer; ``Content-Length`` is the body's, except for HEAD (the object's, as received) and
    for a truncated answer (the full length, so the client sees the body end early)."""
    length = {k.lower(): v for k, v in headers.items()}.get("content-length")
    if not head and exact_length:
        length = str(len(body))
    try:
        handler.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "date", "server"):
                handler.send_header(name, value)
        if length is not None:
            handler.send_header("Content-Length", length)
        handler.send_header("Connection", "close")
        handler.end_headers()
        if not head:
            handler.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client gave up (read timeout): exactly what a slow-response test provokes


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


def _error_xml(status: int) -> bytes:
    code = {500: "InternalError", 503: "SlowDown", 403: "AccessDenied", 404: "NoSuchKey"}.get(status, "Error")
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>injected by the test proxy</Message><RequestId>fault</RequestId></Error>").encode()


@pytest.fixture
def fault_proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(moto_endpoint).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def make_publisher(endpoint: str, bucket: str, **overrides: Any) -> Any:
    """An :class:`S3Publisher` tuned for tests: tiny parts, short timeouts, fast back-off."""
    from telemetry_core.store.s3.publisher import S3Publisher, S3Settings

    values: dict[str, Any] = {"bucket": bucket, "endpoint_url": endpoint, "part_size": 4096, "retries": 2,
                              "connect_timeout": 1.0, "read_timeout": 5.0, "backoff": 0.01, "max_backoff": 0.05}
    values.update(overrides)
    return S3Publisher(S3Settings(**values))
