"""The edge's aiohttp application: submission endpoints, health, status and metrics.

One :class:`EdgeHandlers` per worker process holds the engine, the spool
writer and the counters; :func:`build_app` mounts its handlers and the
routes plugins add (``telemetry_receive_routes``).  Every status code is
listed in ``docs/receive.md``.  The rules that matter most:

* a submission is answered 2xx only after the spool writer's ``append``
  returned (it runs in the worker's spool thread, :mod:`telemetry_core.receive.spool_thread`;
  raw first: nothing is acknowledged that is not in the spool);
* a full disk, a failing spool, overload and shutdown answer 503 with
  ``Retry-After`` (clients keep the ping and retry), never a silent loss;
* a request counts against ``receive.max_in_flight`` only once its body is
  complete; bodies still arriving are bounded apart
  (``receive.max_slow_bodies``, ``receive.body_timeout_s``), so slow
  clients cannot take the slots of fast ones;
* a client that half-closes its connection after a complete request still
  gets its answer (:class:`EdgeRunner`);
* ``GET /`` and ``/__heartbeat__`` give the same readiness (:meth:`EdgeHandlers.readiness`);
* an absolute-form request target (``POST http://host/submit/...``) is read
  by its path component only (RFC 9112 §3.2.2);
* every refusal is counted by reason under ``/edge/rejected``.

The body is read as sent (aiohttp's automatic decompression is off; see
:func:`runner_options`), so gzip bodies are spooled byte for byte.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from .. import __version__
from ..compress import bounded_gzip
from .batch import BATCH_KINDS, split_batch
from .dashboard import add_dashboard_routes, admin_token, require_token
from .health import SpoolHealth
from .node_metrics import EdgeStats, NodeMetrics
from .spool_thread import SpoolThread
from ..records import Rejection, Submission, SubmissionPath
from ..store.spool.files import SpoolError, SpoolRecordError, SpoolWriteError

__all__ = ["SUBMIT_PREFIX", "EdgeHandlers", "EdgeRunner", "EdgeSettings", "EdgeState", "build_app",
           "decode_submission_path", "origin_path", "runner_options"]

log = logging.getLogger(__name__)

SUBMIT_PREFIX = "/submit/telemetry/"
SUBMIT_METHODS = ("POST", "PUT")
_OK = b"OK\n"


@dataclass(frozen=True)
class EdgeSettings:
    """The ``receive`` keys a worker's handlers use (see docs/configuration.md)."""

    max_body_bytes: int = 1024 * 1024
    max_inflated_bytes: int = 8 * 1024 * 1024
    max_path_bytes: int = 10 * 1024
    max_batch_records: int = 1000
    max_in_flight: int = 512
    max_slow_bodies: int = 512
    body_grace_s: float = 0.5
    body_timeout_s: float = 10.0
    idle_timeout_s: float = 75.0
    drain_timeout_s: float = 20.0
    retry_after_s: int = 30

    @classmethod
    def from_config(cls, config: Any) -> "EdgeSettings":
        receive = config["receive"]
        return cls(**{name: receive[name] for name in cls.__dataclass_fields__})


@dataclass
class EdgeState:
    """What the handlers of one worker share besides the engine: readiness and load."""

    ready: bool = False
    draining: bool = False
    in_flight: int = 0
    #: Requests whose body was not all there when their handler started, still reading it.
    reading: int = 0


class _BodyTooLarge(Exception):
    """A body (chunked, so of no announced length) grew past ``receive.max_body_bytes``."""


class _BodyBuffer:
    """Reads one request body in pieces, so a read cut short by a timeout loses nothing read so far.

    The edge reads a body in two windows (:meth:`EdgeHandlers._read_body`):
    the grace window, then, holding a reading slot, the rest of the body
    timeout; the pieces read in the first stay here for the second.
    """

    def __init__(self, stream: Any, limit: int) -> None:
        self._stream, self._limit = stream, limit
        self._pieces: list[bytes] = []
        self._size = 0

    async def read_all(self) -> bytes:
        stream = self._stream
        while True:
            piece = await stream.readany()
            if not piece:
                return b"".join(self._pieces)
            self._size += len(piece)
            if self._size > self._limit:
                raise _BodyTooLarge()
            self._pieces.append(piece)


def runner_options(settings: EdgeSettings) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner``: no decompression, no access log, our timeouts.

    The request line may hold a path percent-encoded to three times
    ``max_path_bytes``; longer lines are refused by aiohttp's parser with 400.
    """
    return {"auto_decompress": False, "access_log": None, "handle_signals": False,
            "keepalive_timeout": settings.idle_timeout_s, "shutdown_timeout": settings.drain_timeout_s,
            "max_line_size": max(8190, 3 * settings.max_path_bytes + len(SUBMIT_PREFIX) + 64)}


def origin_path(target: str) -> str:
    """The path of a raw request target, still percent-encoded, without its query.

    An absolute-form target (``http://host/submit/...``, RFC 9112 §3.2.2) gives
    its URL's path component: the host part never becomes part of the path.
    """
    if not target.startswith("/"):
        return urlsplit(target).path or "/"
    return target.split("?", 1)[0]


def decode_submission_path(raw_path: str, max_path_bytes: int) -> str | Rejection:
    """The path after ``/submit/telemetry/``, percent-decoded, from the raw request target.

    Decoding is per segment, so an encoded ``/`` (``%2F``) cannot smuggle in
    a segment; the query string is ignored, and so is the scheme and host of
    an absolute-form target (:func:`origin_path`).  Non-UTF-8 paths are refused.
    """
    path = origin_path(raw_path)
    if not path.startswith(SUBMIT_PREFIX):
        return Rejection(404, "unknown_path", "nothing is served at this path")
    raw = path[len(SUBMIT_PREFIX):]
    if len(raw) > 3 * max_path_bytes:
        return Rejection(414, "path_too_long", f"submission path is over {max_path_bytes} bytes")
    if "%" not in raw and raw.isascii():
        path = raw
    else:
        segments = []
        try:
            for segment in raw.split("/"):
                decoded = unquote_to_bytes(segment.encode("utf-8", "surrogateescape"))
                if b"/" in decoded:
                    return Rejection(400, "invalid_character", "a path segment holds an encoded '/' (%2F)")
                segments.append(decoded.decode("utf-8"))
        except UnicodeError:
            return Rejection(400, "invalid_path_encoding", "the path is not UTF-8 once percent-decoded")
        path = "/".join(segments)
    if len(path) > max_path_bytes or len(path.encode("utf-8")) > max_path_bytes:
        return Rejection(414, "path_too_long", f"submission path is over {max_path_bytes} bytes")
    return path


def _content_encoding(request: web.Request) -> str | Rejection:
    value = request.headers.get("Content-Encoding", "").strip().lower()
    if value in ("", "identity"):
        return "identity"
    if value in ("gzip", "x-gzip"):
        return "gzip"
    return Rejection(415, "unsupported_encoding",
                     f"Content-Encoding {value[:40]!r} is not accepted; send gzip or identity")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class EdgeHandlers:
    """The request handlers of one worker (one event loop, one spool writer)."""

    def __init__(self, engine: Any, spool: SpoolThread, *, settings: EdgeSettings, state: EdgeState,
                 stats: EdgeStats, health: SpoolHealth, metrics: NodeMetrics, worker: int = 0) -> None:
        self.engine = engine
        self.spool = spool
        self.settings = settings
        self.state = state
        self.stats = stats
        self.health = health
        self.metrics = metrics
        self.worker = worker
        self.node_id = engine.node_id

    # ------------------------------------------------------------------ answers

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain",
                headers: dict[str, str] | None = None) -> web.Response:
        self.stats.responses[str(status)] += 1
        return web.Response(status=status, body=body, content_type=content_type, headers=headers)

    def reject(self, rejection: Rejection, headers: dict[str, str] | None = None) -> web.Response:
        """Count ``rejection`` by reason and answer it (503s carry Retry-After)."""
        self.stats.reject(rejection.reason)
        if rejection.status == 503:
            headers = {**(headers or {}), "Retry-After": str(self.settings.retry_after_s)}
        text = f"{rejection.reason}: {rejection.detail}\n" if rejection.detail else f"{rejection.reason}\n"
        return self._answer(rejection.status, text.encode("utf-8", "replace"), headers=headers)

    # ------------------------------------------------------------------ submissions

    async def submit(self, request: web.Request) -> web.StreamResponse:
        """``POST|PUT /submit/telemetry/...``: one submission, or a batch."""
        if request.method not in SUBMIT_METHODS:
            return self.reject(Rejection(405, "method_not_allowed", f"{request.method} is not accepted here; "
                                                                    "use POST or PUT"),
                               headers={"Allow": ", ".join(SUBMIT_METHODS)})
        started = time.perf_counter()
        self.stats.requests += 1
        try:
            return await self._submit(request)
        finally:
            self.stats.latency.addValue(time.perf_counter() - started)

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        early = self.health.refusal()
        if early is not None:
            return self.reject(early)
        path = decode_submission_path(request.raw_path, self.settings.max_path_bytes)
        if isinstance(path, Rejection):
            return self.reject(path)
        if path in BATCH_KINDS:
            return await self._batch(request, path)
        parsed = self.engine.parse_path(path=path)
        if isinstance(parsed, Rejection):
            return self.reject(parsed)
        encoding = _content_encoding(request)
        if isinstance(encoding, Rejection):
            return self.reject(encoding)
        body = await self._read_body(request)
        if isinstance(body, Rejection):
            return self.reject(body)
        overloaded = self._admission()
        if overloaded is not None:
            return self.reject(overloaded)
        self.state.in_flight += 1
        try:
            submission = self._submission(request, parsed, path, body, encoding, _now_ms())
            rejection = await self._spool(submission)
        finally:
            self.state.in_flight -= 1
        if rejection is not None:
            return self.reject(rejection)
        return self._answer(200, _OK)

    def _admission(self) -> Rejection | None:
        """Refuse a request whose body is complete when this worker has ``max_in_flight``
        such requests already (a full disk is refused before the body is read).

        A request that reaches a draining worker (on a connection it already
        had) is still served: the spool stays open until the drain is over.
        """
        if self.state.in_flight >= self.settings.max_in_flight:
            return Rejection(503, "overloaded", "too many requests in flight; retry later")
        return None

    def _submission(self, request: web.Request, parsed: SubmissionPath, path: str, body: bytes,
                    encoding: str, received_at_ms: int) -> Submission:
        return Submission(id=parsed.id, path=path, body=body, received_at_ms=received_at_ms,
                          dims=dict(parsed.dims), encoding=encoding, headers=request.headers,
                          peer=request.remote)

    async def _read_body(self, request: web.Request) -> bytes | Rejection:
        """The body as sent, within the size and time limits."""
        length = request.content_length
        if length is None and "chunked" not in request.headers.get("Transfer-Encoding", "").lower():
            return Rejection(411, "length_required", "send a Content-Length header (or a chunked body)")
        if length is not None and length > self.settings.max_body_bytes:
            return Rejection(413, "body_too_large", f"body of {length} bytes is over the limit of "
                                                    f"{self.settings.max_body_bytes}")
        state = self.state
        settings = self.settings
        body = _BodyBuffer(request.content, settings.max_body_bytes)
        grace = min(settings.body_grace_s, settings.body_timeout_s)
        try:
            if request.content.is_eof():  # all of it is here already: no timer, no slot needed
                return await body.read_all()
            try:  # a body sent just after its headers (two writes) is not slow: no slot for it
                async with asyncio.timeout(grace):
                    return await body.read_all()
            except TimeoutError:
                pass
            if state.reading >= settings.max_slow_bodies:
                return Rejection(503, "too_many_slow_bodies", "too many bodies still arriving; retry later")
            state.reading += 1
            try:
                async with asyncio.timeout(settings.body_timeout_s - grace):
                    return await body.read_all()
            finally:
                state.reading -= 1
        except TimeoutError:
            return Rejection(408, "body_timeout", f"the body did not arrive within "
                                                  f"{settings.body_timeout_s:g} s")
        except _BodyTooLarge:
            return Rejection(413, "body_too_large", f"body is over the limit of {settings.max_body_bytes}")
        except (ConnectionError, HttpProcessingError, OSError) as error:
            return Rejection(400, "truncated_body", f"the body was cut short ({type(error).__name__})")

    async def _spool(self, submission: Submission) -> Rejection | None:
        """Enrich, validate and append one submission; ``None`` once it is in the spool."""
        engine = self.engine
        engine.enrich(submission=submission)
        rejection = engine.validate_submission(submission=submission)
        if rejection is not None:
            return rejection
        try:
            await self.spool.append(submission.path, submission.body, client_addr=submission.client_addr,
                                    timestamp_ms=submission.received_at_ms)
        except SpoolRecordError as error:
            status = {"path": 414, "body": 413}.get(error.field, 400)
            return Rejection(status, f"{error.field}_over_spool_limit", str(error))
        except SpoolWriteError as error:
            self.health.write_failed(str(error))
            log.error("spool append failed, answering 503: %s", error)
            return Rejection(503, "spool_write_failed", "the spool could not store the submission; retry later")
        except SpoolError as error:
            log.error("spool unavailable, answering 503: %s", error)
            return Rejection(503, "spool_unavailable", "the spool is not accepting records; retry later")
        if self.health.last_write_error is not None:
            self.health.write_succeeded()
        stats = self.stats
        stats.accepted += 1
        stats.accepted_bytes += len(submission.body)
        try:
            engine.accepted(submission=submission)
        except Exception:  # noqa: BLE001 - the record is spooled: acknowledge it, report the plugin
            stats.accepted_hook_errors += 1
            log.exception("a telemetry_receive_accepted plugin failed for spooled submission %s", submission.id)
        return None

    async def _batch(self, request: web.Request, kind: str) -> web.StreamResponse:
        """``/submit/telemetry/batch`` and ``batch_dims``: every record accepted or refused on its own."""
        self.stats.batch_requests += 1
        encoding = _content_encoding(request)
        if isinstance(encoding, Rejection):
            return self.reject(encoding)
        body = await self._read_body(request)
        if isinstance(body, Rejection):
            return self.reject(body)
        if encoding == "gzip" and body:
            try:
                body = bounded_gzip.inflate(body, self.settings.max_inflated_bytes)
            except bounded_gzip.GzipError as error:
                return self.reject(Rejection(413 if error.reason == "inflated_too_large" else 400,
                                             error.reason, str(error)))
        records = split_batch(body, kind, self.settings.max_batch_records)
        if isinstance(records, Rejection):
            return self.reject(records)
        overloaded = self._admission()
        if overloaded is not None:
            return self.reject(overloaded)
        self.state.in_flight += 1
        try:
            return await self._batch_records(request, records)
        finally:
            self.state.in_flight -= 1

    async def _batch_records(self, request: web.Request, records: list[Any]) -> web.StreamResponse:
        received_at_ms = _now_ms()
        results = []
        accepted = 0
        for record in records:
            self.stats.batch_records += 1
            outcome = await self._batch_record(request, record.path, record.body, record.problem, received_at_ms)
            if outcome is None:
                accepted += 1
                results.append({"id": record.path.split("/", 1)[0], "status": 200})
            else:
                self.stats.reject(outcome.reason)
                ident = record.path.split("/", 1)[0] if record.path else None
                results.append({"id": ident, "status": outcome.status, "reason": outcome.reason,
                                "detail": outcome.detail})
        retry = any(result["status"] == 503 for result in results)
        document = {"accepted": accepted, "rejected": len(results) - accepted, "results": results}
        headers = {"Retry-After": str(self.settings.retry_after_s)} if retry else None
        return self._answer(503 if retry else 200, orjson.dumps(document), "application/json", headers)

    async def _batch_record(self, request: web.Request, path: str | None, body: bytes, problem: Rejection | None,
                      received_at_ms: int) -> Rejection | None:
        if problem is not None or path is None:
            return problem
        if len(path.encode("utf-8")) > self.settings.max_path_bytes:
            return Rejection(414, "path_too_long", f"submission path is over {self.settings.max_path_bytes} bytes")
        parsed = self.engine.parse_path(path=path)
        if isinstance(parsed, Rejection):
            return parsed
        return await self._spool(self._submission(request, parsed, path, body, "identity", received_at_ms))

    # ------------------------------------------------------------------ node endpoints

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether this worker takes submissions now, and the checks that say so: the one
        answer of ``GET /`` and ``/__heartbeat__``."""
        checks = self.health.checks()
        checks["accepting"] = {"ok": self.state.ready and not self.state.draining,
                               "draining": self.state.draining}
        return all(check["ok"] for check in checks.values()), checks

    async def motd(self, request: web.Request) -> web.StreamResponse:
        """``GET /``: 200 with the version when this worker takes submissions (the same
        readiness as ``/__heartbeat__``), else 503 naming the failing checks."""
        ready, checks = self.readiness()
        failing = ", ".join(name for name, check in checks.items() if not check["ok"])
        text = (f"telemetry-core {__version__} edge, node {self.node_id}, worker {self.worker}: "
                f"{'ready' if ready else f'not ready ({failing})'}\n")
        return self._answer(200 if ready else 503, text.encode(),
                            headers=None if ready else {"Retry-After": str(self.settings.retry_after_s)})

    async def lbheartbeat(self, request: web.Request) -> web.StreamResponse:
        """``GET /__lbheartbeat__``: the process answers and is not shutting down."""
        if self.state.draining or not self.state.ready:
            return self._answer(503, b"not ready\n", headers={"Retry-After": str(self.settings.retry_after_s)})
        return self._answer(200, _OK)

    async def heartbeat(self, request: web.Request) -> web.StreamResponse:
        """``GET /__heartbeat__``: 200 when the spool is writable and the disk above its floor, else 503."""
        healthy, checks = self.readiness()
        document = {"status": "ok" if healthy else "failing", "node_id": self.node_id, "worker": self.worker,
                    "checks": checks}
        return self._answer(200 if healthy else 503, orjson.dumps(document), "application/json",
                            None if healthy else {"Retry-After": str(self.settings.retry_after_s)})

    async def status(self, request: web.Request) -> web.StreamResponse:
        """``GET /status``: the node's scales stats as JSON (every worker, and their sum)."""
        return self._answer(200, orjson.dumps(self.metrics.status(), option=orjson.OPT_SORT_KEYS),
                            "application/json")

    async def prometheus(self, request: web.Request) -> web.StreamResponse:
        """``GET /metrics``: Prometheus text exposition 0.0.4, labelled by node and worker."""
        response = self._answer(200, self.metrics.prometheus().encode())
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    # ------------------------------------------------------------------ unknown routes

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        """Everything no route serves: 405 (with ``Allow``) when another method would be served, else 404."""
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if resource is request.match_info.route.resource:
                continue
            match, methods = await resource.resolve(request)
            allowed |= methods
        if allowed:
            return self.reject(Rejection(405, "method_not_allowed", f"{request.method} is not served here"),
                               headers={"Allow": ", ".join(sorted(allowed))})
        return self.reject(Rejection(404, "unknown_path", "nothing is served at this path"))


class _AnswerHalfClosed(RequestHandler):
    """aiohttp's connection handler, except that a client which shuts down its write side
    after a complete request still gets the answer (aiohttp closes the transport on EOF).

    A body cut short by the EOF still ends the connection at once (``truncated_body``);
    so does an EOF on an idle keep-alive connection.
    """

    __slots__ = ("_last_payload", "_half_closed")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages:
            self._last_payload = self._messages[-1][1]

    def eof_received(self) -> bool | None:
        payload = getattr(self, "_last_payload", None)
        if payload is None or not payload.is_eof():
            return None  # nothing asked, or a body cut short: close now
        if self._waiter is not None and not self._waiter.done() and not self._messages:
            return None  # idle between requests: nothing to answer
        self._half_closed = True
        self._close = not self._messages  # answer what arrived (pipelined requests too), then close
        return True

    async def finish_response(self, request: Any, resp: Any, start_time: float | None) -> Any:
        result = await super().finish_response(request, resp, start_time)
        if getattr(self, "_half_closed", False) and not self._messages:
            self._close = True
        return result


class _EdgeServer(web.Server):
    """The protocol factory of :class:`EdgeRunner`: every connection gets :class:`_AnswerHalfClosed`."""

    def __call__(self) -> RequestHandler:
        return _AnswerHalfClosed(self, loop=self._loop, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer half-closed requests (:class:`_AnswerHalfClosed`).

    Relies on aiohttp 3's server classes; tests/test_edge_hostile.py fails if that changes.
    """

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _EdgeServer
        return server


def build_app(handlers: EdgeHandlers, extra_routes: list[Any] = ()) -> web.Application:
    """The aiohttp application of one worker: our endpoints, plugins' routes, then a catch-all
    that counts 404 and 405 answers (a middleware would cost every request)."""
    app = web.Application(client_max_size=handlers.settings.max_body_bytes)
    router = app.router
    router.add_route("*", SUBMIT_PREFIX + r"{rest:[\s\S]*}", handlers.submit)  # newlines too (they get a 400)
    router.add_get("/", handlers.motd)
    token = admin_token(handlers.engine)
    router.add_get("/status", require_token(token, handlers.status))
    router.add_get("/metrics", require_token(token, handlers.prometheus))
    add_dashboard_routes(router, token)
    router.add_get("/__heartbeat__", handlers.heartbeat)
    router.add_get("/__lbheartbeat__", handlers.lbheartbeat)
    for route in extra_routes:
        router.add_route(route.method, route.path, route.handler)
    router.add_route("*", r"/{path:[\s\S]*}", handlers.not_found)
    return app
