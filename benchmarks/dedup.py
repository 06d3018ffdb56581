"""Dedup decisions per second for each backend against an in-memory dict baseline.

Run from the repository root::

    .venv/bin/python benchmarks/dedup.py [--decisions 20000] [--processes 2] [--dir /tmp]

A stream of submissions is generated as Firefox sends them: sessions of 1-4
daily idle-dailies, 60 % of them ending in a saved-session, and 30 % of the
submissions sent again (exact copies). The stream is shuffled, the way
spool files arrive. Every run decides the same stream with the same rules
(``telemetry_core.dedup.rules.decide``), with the state kept in:

* ``dict``: a Python dict of ``SessionState`` objects. This is the
  baseline: the rules alone, with no serialization, no I/O and no
  atomicity;
* ``sqlite``: ``SqliteDedupBackend``, one transaction per decision, in a
  temporary directory under ``--dir``;
* ``redis``: ``RedisDedupBackend`` against a redis-server that this script
  starts on a free loopback port (memory only, and again with
  ``appendfsync everysec``);
* ``(redis PING round trips)``: bare ``PING`` calls with redis-py, for
  scale; a Redis decision makes two round trips (``HMGET`` + the
  compare-and-set script);
* ``+ledger``: the same, plus a ``LedgerWriter`` line per decision, which
  is what the processor pays through ``Deduplicator``.

With ``--processes N`` the SQLite and Redis runs are repeated with N
processes that share the backend, each deciding 1/N of the stream. Their
aggregate rate is reported. Ratios are against the dict baseline of the
same run; the best of ``--repeat`` runs is kept. This is not a test:
nothing passes or fails.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from telemetry_core.dedup.ledger import LedgerWriter  # noqa: E402
from telemetry_core.dedup.redis_backend import RedisDedupBackend  # noqa: E402
from telemetry_core.dedup.rules import SessionState, body_hash, decide  # noqa: E402
from telemetry_core.dedup.sqlite_backend import SqliteDedupBackend  # noqa: E402
from telemetry_core.records import DedupKey  # noqa: E402

DAY_MS = 86_400_000
T0 = 1_378_000_000_000


def generate(count: int, seed: int = 1) -> list[tuple[DedupKey, str, int]]:
    """About ``count`` submissions as ``(key, record id, received_at_ms)``, shuffled."""
    rng = random.Random(seed)
    subs = []
    index = 0
    while len(subs) < count:
        index += 1
        sid = f"{index:08x}-{rng.randrange(1 << 16):04x}-4000-8000-{rng.randrange(1 << 48):012x}"
        start = T0 + rng.randrange(30) * DAY_MS
        originals = []
        for day in range(rng.randint(1, 4)):
            body = json.dumps({"session": sid, "day": day, "uptime": rng.randrange(10 ** 6)}).encode()
            originals.append(("idle-daily", body_hash(body), start + day * DAY_MS + rng.randrange(3_600_000)))
        if rng.random() < 0.6:
            originals.append(("saved-session", body_hash(sid.encode()), originals[-1][2] + rng.randrange(DAY_MS)))
        for kind, digest, ms in list(originals):
            if rng.random() < 0.3:
                originals.append((kind, digest, ms + 1000 + rng.randrange(DAY_MS)))
        subs.extend((DedupKey(sid, kind, digest), sid, ms) for kind, digest, ms in originals)
    rng.shuffle(subs)
    return subs[:count]


class DictBackend:
    """The baseline: the same rules, state in a dict."""

    name = "dict"

    def __init__(self) -> None:
        self.states: dict[str, SessionState] = {}

    def decide(self, key: DedupKey, record_id: str, received_at_ms: int):
        state = self.states.get(key.session)
        if state is None:
            state = self.states[key.session] = SessionState()
        return decide(state, key, record_id, received_at_ms, now_us=time.time_ns() // 1000)

    def close(self) -> None:
        pass


def run(make_backend, subs, ledger_dir: Path | None) -> float:
    """Decisions per second of one backend over ``subs``."""
    backend = make_backend()
    writer = LedgerWriter(ledger_dir, "bench") if ledger_dir is not None else None
    started = time.perf_counter()
    for key, record_id, received in subs:
        decision = backend.decide(key, record_id, received)
        if writer is not None:
            writer.write(decision)
    if writer is not None:
        writer.sync()
        writer.close()
    elapsed = time.perf_counter() - started
    backend.close()
    return len(subs) / elapsed


def _child(spec, subs, ledger_dir, barrier, results) -> None:
    try:
        backend = SqliteDedupBackend(spec[1]) if spec[0] == "sqlite" else RedisDedupBackend(spec[1], prefix=spec[2])
        barrier.wait(timeout=60)
        started = time.perf_counter()
        writer = LedgerWriter(ledger_dir, f"bench{os.getpid()}")
        for key, record_id, received in subs:
            writer.write(backend.decide(key, record_id, received))
        writer.close()
        results.put((started, time.perf_counter()))
        backend.close()
    except BaseException as exc:  # reported to the parent, which stops
        results.put(exc)
        raise


def run_processes(spec, subs, processes: int, ledger_dir: Path) -> float:
    """Aggregate decisions per second of ``processes`` processes sharing one backend."""
    context = multiprocessing.get_context("spawn")  # fork could inherit a lock held by another thread
    barrier = context.Barrier(processes)
    results = context.Queue()
    parts = [subs[i::processes] for i in range(processes)]
    children = [context.Process(target=_child, args=(spec, part, ledger_dir, barrier, results)) for part in parts]
    for child in children:
        child.start()
    spans = [results.get(timeout=600) for _ in children]
    for child in children:
        child.join()
    for span in spans:
        if isinstance(span, BaseException):
            raise RuntimeError(f"a benchmark process failed: {span!r}")
    return len(subs) / (max(end for _, end in spans) - min(start for start, _ in spans))


class Redis:
    def __init__(self, directory: Path, aof: bool) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        args = [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(self.port),
                "--bind", "127.0.0.1", "--dir", str(directory), "--save", "", "--logfile", "",
                "--appendonly", "yes" if aof else "no", "--appendfsync", "everysec"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--processes", type=int, default=2, help="also run N processes sharing a backend (0 = skip)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where SQLite files and ledgers go (default: the temp dir)")
    args = parser.parse_args()

    subs = generate(args.decisions)
    root = Path(tempfile.mkdtemp(prefix="dedup-bench-", dir=args.dir))
    redis_servers = {}
    if shutil.which("redis-server") or Path("/usr/bin/redis-server").exists():
        for aof in (False, True):
            directory = root / f"redis-{'aof' if aof else 'mem'}"
            directory.mkdir()
            redis_servers[aof] = Redis(directory, aof)
    counter = iter(range(10 ** 6))

    def fresh_dir() -> Path:
        path = root / f"run{next(counter)}"
        path.mkdir()
        return path

    def sqlite() -> SqliteDedupBackend:
        return SqliteDedupBackend(fresh_dir() / "dedup.sqlite")

    def redis(aof: bool):
        return lambda: RedisDedupBackend(redis_servers[aof].url, prefix=f"bench{next(counter)}:")

    cases = [("dict", DictBackend, False), ("dict +ledger", DictBackend, True),
             ("sqlite", sqlite, False), ("sqlite +ledger", sqlite, True)]
    for aof, label in ((False, "redis (memory)"), (True, "redis (aof everysec)")):
        if aof in redis_servers:
            cases += [(label, redis(aof), False), (label + " +ledger", redis(aof), True)]
    try:
        rates: dict[str, float] = {}
        for _ in range(args.repeat):
            for label, make, ledger in cases:
                rate = run(make, subs, fresh_dir() if ledger else None)
                rates[label] = max(rates.get(label, 0.0), rate)
        if False in redis_servers:  # the client's own limit: one round trip per call
            import redis as redis_py

            client = redis_py.Redis.from_url(redis_servers[False].url)
            for _ in range(args.repeat):
                started = time.perf_counter()
                for _ in range(len(subs)):
                    client.ping()
                rate = len(subs) / (time.perf_counter() - started)
                rates["(redis PING round trips, for scale)"] = max(rates.get("(redis PING round trips, for scale)", 0),
                                                                  rate)
            client.close()
        if args.processes > 1:
            specs = [("sqlite", lambda: ("sqlite", str(fresh_dir() / "dedup.sqlite")))]
            if False in redis_servers:
                specs.append(("redis (memory)", lambda: ("redis", redis_servers[False].url, f"p{next(counter)}:")))
            for label, spec in specs:
                key = f"{label} +ledger x{args.processes} processes"
                for _ in range(args.repeat):
                    rates[key] = max(rates.get(key, 0.0), run_processes(spec(), subs, args.processes, fresh_dir()))
    finally:
        for server in redis_servers.values():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)

    baseline = rates["dict"]
    print(f"dedup decisions: {len(subs)} submissions, {len({s[0].session for s in subs})} sessions, "
          f"best of {args.repeat}; CPUs: {os.cpu_count()}; files under {root.parent}")
    print(f"{'backend':<40} {'decisions/s':>12} {'vs dict':>9}")
    for label, rate in rates.items():
        print(f"{label:<40} {rate:>12,.0f} {rate / baseline:>8.3f}x")


if __name__ == "__main__":
    main()
