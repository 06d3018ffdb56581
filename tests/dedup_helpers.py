"""Helpers for the dedup tests: a generated submission stream whose answer is
known by construction, and a real redis-server on a free loopback port."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from telemetry_core.dedup.rules import body_hash
from telemetry_core.records import DedupKey, Record

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
DAY_MS = 86_400_000
T0 = 1_378_000_000_000


def uuid(index: int) -> str:
    return f"{index:08x}-0000-4000-8000-{index:012x}"


@dataclass(frozen=True)
class Sub:
    """One submission of the generated stream."""

    id: str
    kind: str
    body: bytes
    received_at_ms: int

    @property
    def hash(self) -> str:
        return body_hash(self.body)

    def key(self) -> DedupKey:
        return DedupKey(session=self.id, kind=self.kind, body_hash=self.hash)

    def record(self) -> Record:
        return Record(id=self.id, path=f"{self.id}/{self.kind}/Firefox/23.0.1/release/20130814063812", raw=self.body,
                      received_at_ms=self.received_at_ms, dims={"reason": self.kind}, payload={},
                      stored_json=self.body, body_hash=self.hash)


@dataclass
class Stream:
    """Submissions plus the truth: the live body hash of every session, and the
    number of submissions that are exact resubmissions (extra copies)."""

    subs: list[Sub]
    live: dict[str, str]
    extra_copies: int
    not_applicable: int


def generate_stream(sessions: int, seed: int, *, first: int = 1) -> Stream:
    """Sessions of 1-4 daily idle-dailies, 60 % ending in a saved-session,
    30 % of submissions sent again later (exact copies, sometimes after the
    next day's idle-daily), plus a few records of a kind that is never
    de-duplicated.  The truth is known by construction: a session's live
    record is its saved-session, or else its last day's idle-daily."""
    rng = random.Random(seed)
    subs: list[Sub] = []
    live: dict[str, str] = {}
    extra = not_applicable = 0
    for index in range(first, first + sessions):
        sid = uuid(index)
        start = T0 + rng.randrange(10) * DAY_MS + rng.randrange(DAY_MS // 2)
        originals = []
        for day in range(rng.randint(1, 4)):
            body = json.dumps({"session": sid, "day": day, "uptime": rng.randrange(10 ** 6)}).encode()
            originals.append(Sub(sid, "idle-daily", body, start + day * DAY_MS + rng.randrange(3_600_000)))
        if rng.random() < 0.6:
            body = json.dumps({"session": sid, "saved": True, "uptime": rng.randrange(10 ** 6)}).encode()
            originals.append(Sub(sid, "saved-session", body, originals[-1].received_at_ms + 1 + rng.randrange(DAY_MS)))
        live[sid] = originals[-1].hash
        subs.extend(originals)
        for original in originals:
            if rng.random() < 0.3:
                subs.append(Sub(sid, original.kind, original.body,
                                original.received_at_ms + 1000 + rng.randrange(2 * DAY_MS)))
                extra += 1
        if rng.random() < 0.1:
            body = json.dumps({"session": sid, "anr": True}).encode()
            subs.append(Sub(sid, "android-anr-report", body, start + 5))
            not_applicable += 1
    rng.shuffle(subs)
    return Stream(subs, live, extra, not_applicable)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """A redis-server process on 127.0.0.1:<free port>, data in ``directory``.

    ``persistent`` turns on the append-only file with ``appendfsync always``,
    so a SIGKILL loses nothing (for the restart tests).
    """

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.persistent = persistent
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--save", "", "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
                "--logfile", str(self.directory / "redis.log")]
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; "
                                   f"see {self.directory / 'redis.log'}")
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def kill(self) -> None:
        """SIGKILL, like a crash."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


def open_backend(spec: tuple, **options):
    """A backend from a picklable spec: ``("sqlite", path)`` or ``("redis", url, prefix)``."""
    from telemetry_core.dedup.redis_backend import RedisDedupBackend
    from telemetry_core.dedup.sqlite_backend import SqliteDedupBackend

    if spec[0] == "sqlite":
        return SqliteDedupBackend(spec[1], **options)
    return RedisDedupBackend(spec[1], prefix=spec[2], **options)


def decide_in_process(spec: tuple, subs: list[Sub], ledger_dir: str, node: str, barrier) -> None:
    """A child process: decide ``subs`` in order on the backend of ``spec``,
    each decision appended to this process's ledger file (run with spawn)."""
    from telemetry_core.dedup.ledger import LedgerWriter

    backend = open_backend(spec)
    writer = LedgerWriter(ledger_dir, node)
    barrier.wait(timeout=30)
    for item in subs:
        writer.write(backend.decide(item.key(), item.id, item.received_at_ms))
    writer.close()
    backend.close()
