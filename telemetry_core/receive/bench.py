"""A load generator for the edge, like the original ``util/benchmark_server.py``.

:func:`generate_load` keeps N keep-alive connections busy with realistic
submissions (each request gets a fresh submission id and varied
dimensions; bodies are Firefox-ping-shaped JSON of about ``body_bytes``,
optionally gzip; optionally ``batch`` records per request) and returns a
:class:`LoadResult`: requests/s, MB/s, latency percentiles and errors by
kind.  The client is a small asyncio protocol that writes pre-built
requests and parses only the status line and ``Content-Length`` of each
answer, so it costs much less per request than the server it measures.

``telemetry bench edge`` runs it from the command line;
``benchmarks/edge.py`` uses it to compare the edge with a minimal aiohttp
app in the same run.
"""

from __future__ import annotations

import asyncio
import gzip as gzip_module
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LoadResult", "generate_load", "ping_bodies", "read_ping", "synthetic_ping"]

REASONS = ("saved-session", "idle-daily")
CHANNELS = ("release", "beta", "aurora", "nightly")
VERSIONS = ("23.0.1", "24.0", "25.0a2", "26.0a1")
BUILD_IDS = ("20130814063812", "20130910160258", "20131001004005", "20131015030204")


@dataclass
class LoadResult:
    """What a load run measured."""

    requests: int = 0
    ok: int = 0
    records: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def megabytes_per_s(self) -> float:
        return self.bytes_sent / 1e6 / self.seconds if self.seconds else 0.0

    def percentile_ms(self, quantile: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] * 1000

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "ok": self.ok, "records": self.records,
                "seconds": round(self.seconds, 3), "requests_per_s": round(self.requests_per_s, 1),
                "mb_per_s": round(self.megabytes_per_s, 2),
                "latency_ms": {"p50": round(self.percentile_ms(0.50), 3), "p95": round(self.percentile_ms(0.95), 3),
                               "p99": round(self.percentile_ms(0.99), 3),
                               "max": round(max(self.latencies) * 1000, 3) if self.latencies else None},
                "errors": dict(self.errors)}

    def line(self) -> str:
        s = self.summary()
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(s["errors"].items())) or "none"
        return (f"{s['requests']} requests in {s['seconds']} s: {s['requests_per_s']:,.0f} req/s, "
                f"{s['mb_per_s']:.1f} MB/s; latency ms p50 {s['latency_ms']['p50']:.2f} "
                f"p95 {s['latency_ms']['p95']:.2f} p99 {s['latency_ms']['p99']:.2f} "
                f"max {s['latency_ms']['max'] or 0:.2f}; errors: {errors}")


def synthetic_ping(target_bytes: int, seed: int = 0) -> dict[str, Any]:
    """A classic (``ver`` 1) Firefox ping of about ``target_bytes`` of compact JSON."""
    rng = random.Random(seed)
    ping: dict[str, Any] = {
        "ver": 1,
        "info": {"reason": "saved-session", "OS": "WINNT", "appID": "{ec8030f7-c20a-464f-9b0e-13a3a9e97384}",
                 "appVersion": "23.0.1", "appName": "Firefox", "appBuildID": "20130814063812",
                 "appUpdateChannel": "release", "platformBuildID": "20130814063812",
                 "revision": "http://hg.mozilla.org/releases/mozilla-release/rev/a55c55edf302",
                 "locale": "en-US", "cpucount": 4, "memsize": 8192, "arch": "x86-64"},
        "simpleMeasurements": {"uptime": 42, "main": 120, "firstPaint": 900, "sessionRestored": 1100},
        "histograms": {}, "slowSQL": {"mainThread": {}, "otherThreads": {}}, "chromeHangs": {},
        "lateWrites": {}, "addonHistograms": {},
    }
    size = len(json.dumps(ping, separators=(",", ":")))
    index = 0
    while size < target_bytes:
        values = {str(2 ** b): rng.randint(0, 500) for b in range(rng.randint(3, 20))}
        histogram = {"range": [1, 10000], "bucket_count": 20, "histogram_type": 0, "values": values,
                     "sum": rng.randint(0, 10 ** 6), "log_sum": rng.random() * 100, "log_sum_squares": rng.random() * 1e4}
        name = f"SYNTHETIC_HISTOGRAM_{index}"
        size += len(json.dumps({name: histogram}, separators=(",", ":")))
        ping["histograms"][name] = histogram
        index += 1
    return ping


def read_ping(spool_file: str | Path) -> dict[str, Any]:
    """The first record of a spool file (ours or the node.js framing) as a ping object."""
    from ..store.spool.files import SpoolReader

    for record in SpoolReader(spool_file):
        body = gzip_module.decompress(record.body) if record.is_gzip else record.body
        return json.loads(body)
    raise ValueError(f"{spool_file} holds no readable record")


def ping_bodies(ping: dict[str, Any], count: int, target_bytes: int, *, compress: bool) -> list[bytes]:
    """``count`` distinct bodies made from ``ping``, each trimmed (whole histograms dropped) or
    padded with synthetic histograms to about ``target_bytes`` of JSON, optionally gzipped."""
    histograms = dict(ping.get("histograms") or {})
    if len(json.dumps(ping, separators=(",", ":"))) < target_bytes:
        histograms.update(synthetic_ping(target_bytes)["histograms"])
    bodies = []
    for index in range(count):
        trimmed = dict(ping, histograms={})
        trimmed["info"] = dict(ping.get("info") or {}, benchmarkId=str(uuid.UUID(int=index)))
        size = len(json.dumps(trimmed, separators=(",", ":")))
        for name, value in histograms.items():
            added = len(json.dumps({name: value}, separators=(",", ":")))
            if size + added > target_bytes:
                break
            trimmed["histograms"][name] = value
            size += added
        body = json.dumps(trimmed, separators=(",", ":")).encode()
        bodies.append(gzip_module.compress(body, 6) if compress else body)
    return bodies


class _RequestMaker:
    """Builds the bytes of each request: a fresh id and varied dimensions per submission."""

    def __init__(self, host: str, port: int, bodies: list[bytes], *, compress: bool, batch: int,
                 seed: int) -> None:
        self.host_header = f"{host}:{port}"
        self.bodies = bodies
        self.compress = compress
        self.batch = batch
        self.rng = random.Random(seed)
        self.count = 0
        self.batch_bodies = self._batch_bodies() if batch else []

    def _dims(self) -> str:
        rng = self.rng
        return "/".join((rng.choice(REASONS), "Firefox", rng.choice(VERSIONS), rng.choice(CHANNELS),
                         rng.choice(BUILD_IDS)))

    def _batch_bodies(self) -> list[bytes]:
        out = []
        plain = [gzip_module.decompress(b) if self.compress else b for b in self.bodies]
        for start in range(16):
            parts = []
            for index in range(self.batch):
                dims = self._dims().replace("/", "\t")
                parts.append(f"{uuid.uuid4()}\t{dims}\t".encode() + plain[(start + index) % len(plain)])
            body = b"\t".join(parts)
            out.append(gzip_module.compress(body, 6) if self.compress else body)
        return out

    def next(self) -> tuple[bytes, bytes, int]:
        """Return (head, body, records) of the next request."""
        self.count += 1
        if self.batch:
            body = self.batch_bodies[self.count % len(self.batch_bodies)]
            target, records = "/submit/telemetry/batch_dims", self.batch
        else:
            body = self.bodies[self.count % len(self.bodies)]
            target, records = f"/submit/telemetry/{uuid.uuid4()}/{self._dims()}", 1
        encoding = "Content-Encoding: gzip\r\n" if self.compress else ""
        head = (f"POST {target} HTTP/1.1\r\nHost: {self.host_header}\r\nContent-Type: application/json\r\n"
                f"{encoding}Content-Length: {len(body)}\r\n\r\n").encode()
        return head, body, records


class _Client(asyncio.Protocol):
    """One keep-alive connection: send a request, wait for the whole answer, repeat."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("connection closed by the server"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[:end + 4 + length]
        self.waiter.set_result(int(head.split(" ", 2)[1]))

    async def request(self, head: bytes, body: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.writelines((head, body))
        return await self.waiter


async def generate_load(host: str, port: int, *, bodies: list[bytes], connections: int = 32,
                        duration: float | None = 10.0, requests: int | None = None, compress: bool = False,
                        batch: int = 0, seed: int = 0, timeout: float = 30.0) -> LoadResult:
    """Send submissions over ``connections`` keep-alive connections for ``duration`` seconds
    (or until ``requests`` were sent) and measure them; a 2xx answer is ``ok``."""
    if duration is None and requests is None:
        raise ValueError("give a duration or a number of requests")
    loop = asyncio.get_running_loop()
    maker = _RequestMaker(host, port, bodies, compress=compress, batch=batch, seed=seed)
    result = LoadResult()
    started = time.perf_counter()
    deadline = started + duration if duration is not None else None
    budget = [requests if requests is not None else -1]

    def more() -> bool:
        if deadline is not None and time.perf_counter() >= deadline:
            return False
        if budget[0] == 0:
            return False
        budget[0] -= 1
        return True

    async def connection() -> None:
        client: _Client | None = None
        while more():
            head, body, records = maker.next()
            try:
                if client is None or client.closed.done():
                    _, client = await asyncio.wait_for(loop.create_connection(_Client, host, port), timeout)
                sent_at = time.perf_counter()
                status = await asyncio.wait_for(client.request(head, body), timeout)
            except (OSError, asyncio.TimeoutError) as error:
                result.requests += 1
                result.errors[type(error).__name__] += 1
                if client is not None and client.transport is not None:
                    client.transport.close()
                client = None
                continue
            result.latencies.append(time.perf_counter() - sent_at)
            result.requests += 1
            result.bytes_sent += len(head) + len(body)
            if 200 <= status < 300:
                result.ok += 1
                result.records += records
            else:
                result.errors[f"http_{status}"] += 1
        if client is not None and client.transport is not None:
            client.transport.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    result.seconds = time.perf_counter() - started
    return result
