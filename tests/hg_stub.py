"""A real HTTP server standing in for hg.mozilla.org in processor tests.

It serves ``raw-file`` Histograms.json for the revisions a test registers
(404 for anything else), and can be taken down (its port closed: connection
refused), brought back on the same port, made slow, or made to answer HTML
or 500, so the real requests code path meets each failure.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HISTOGRAMS_PATH = "toolkit/components/telemetry/Histograms.json"


class HgStub:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode = "ok"  # ok | html | 500 | slow
        self.slow_seconds = 2.0
        self.requests: list[str] = []
        self.lock = threading.Lock()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self, repo: str, changeset: str, body: bytes) -> None:
        """Answer ``<repo>/raw-file/<changeset>/...Histograms.json`` with ``body``."""
        self.files[f"/{repo}/raw-file/{changeset}/{HISTOGRAMS_PATH}"] = body

    def requested(self, fragment: str) -> int:
        with self.lock:
            return sum(1 for path in self.requests if fragment in path)

    def start(self) -> "HgStub":
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                return

            def do_GET(self) -> None:
                with stub.lock:
                    stub.requests.append(self.path)
                mode = stub.mode
                if mode == "slow":
                    time.sleep(stub.slow_seconds)
                if mode == "500":
                    return self.answer(500, b"internal error", "text/plain")
                if mode == "html":
                    return self.answer(200, b"<html><body>maintenance</body></html>", "text/html")
                body = stub.files.get(self.path.split("?")[0])
                if body is None:
                    return self.answer(404, b"not found", "text/plain")
                return self.answer(200, body, "application/json")

            def answer(self, status: int, body: bytes, content_type: str) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its read timeout): nothing to answer

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the port: requests now get 'connection refused'."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None
