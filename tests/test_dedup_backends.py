"""The SQLite and Redis dedup backends against real components: concurrency
from two processes, restart survival, Redis going away, order independence,
expiry, and the end-to-end unique-session count through the ledger.

Redis is Debian's redis-server, started on a free loopback port."""

from __future__ import annotations

import collections
import io
import multiprocessing
import random
import threading
import time
import uuid as uuidlib
from pathlib import Path

import pytest

from telemetry_core.dedup import ledger as dedup_ledger
from telemetry_core.dedup import redis_backend as dedup_redis
from telemetry_core.dedup import rules as dedup_rules
from telemetry_core.dedup import sqlite_backend as dedup_sqlite
from telemetry_core.config.loader import read_config
from telemetry_core.dedup.deduplicator import Deduplicator, DuplicateRecord
from telemetry_core.dedup.ledger import DedupLedger, LedgerWriter, finished_ledger_files, ledger_archive_key
from telemetry_core.dedup.redis_backend import RedisDedupBackend
from telemetry_core.dedup.rules import DedupUnavailableError
from telemetry_core.dedup.sqlite_backend import SqliteDedupBackend
from telemetry_core.engine import Engine
from telemetry_core.interfaces import JobSpec
from telemetry_core.plugins import make_plugin_manager

from dedup_helpers import (DAY_MS, T0, RedisServer, Sub, decide_in_process, generate_stream, open_backend,
                           uuid)

BACKENDS = ["sqlite", "redis"]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def backend_spec(request, tmp_path):
    """A picklable backend spec: a fresh SQLite file, or a fresh key prefix on the shared Redis."""
    if request.param == "sqlite":
        return ("sqlite", str(tmp_path / "dedup.sqlite"))
    server = request.getfixturevalue("redis_server")
    return ("redis", server.url, f"test:{uuidlib.uuid4().hex}:")


def fresh_spec(spec: tuple, tmp_path: Path, index: int) -> tuple:
    """Another empty backend of the same kind."""
    if spec[0] == "sqlite":
        return ("sqlite", str(tmp_path / f"dedup-{index}.sqlite"))
    return ("redis", spec[1], f"{spec[2]}{index}:")


def final_states(backend, stream_subs: list[Sub]) -> dict[tuple[str, str], bool]:
    """Every content's superseded flag as the backend stores it; checks one live record per session."""
    out = {}
    for session in {s.id for s in stream_subs if s.kind in dedup_rules.DEDUPLICATED_KINDS}:
        state = backend.session_state(session)
        assert state.live_count() == 1, f"session {session} has {state.live_count()} live records"
        out.update({(c.record_id, c.body_hash): c.superseded for c in state.contents.values()})
    return out


# --------------------------------------------------------------------------- decisions


def test_dedup_backend_decides_like_the_rules(backend_spec):
    backend = open_backend(backend_spec)
    sid = uuid(1)
    day1 = Sub(sid, "idle-daily", b"1", T0)
    day2 = Sub(sid, "idle-daily", b"2", T0 + DAY_MS)
    saved = Sub(sid, "saved-session", b"s", T0 + DAY_MS + 5)
    outcomes = [backend.decide(s.key(), s.id, s.received_at_ms) for s in (day2, day1, saved)]
    assert [d.outcome for d in outcomes] == ["kept", "stale", "superseded_earlier"]
    again = backend.decide(day1.key(), day1.id, day1.received_at_ms)
    assert again.replayed and again.version == outcomes[1].version
    copy = Sub(sid, "idle-daily", b"2", T0 + DAY_MS + 60_000)
    assert backend.decide(copy.key(), copy.id, copy.received_at_ms).outcome == "duplicate"
    anr = Sub(uuid(2), "android-anr-report", b"a", T0)
    assert backend.decide(anr.key(), anr.id, anr.received_at_ms).outcome == "not_applicable"
    assert backend.session_state(uuid(2)) is None  # nothing stored for kinds that are not de-duplicated
    with pytest.raises(dedup_rules.DedupKeyError, match="not a UUID"):
        backend.decide(day1.key(), "../../etc", T0)
    assert backend.session_state(sid).live().body_hash == saved.hash
    backend.sync()
    assert backend.expire() == 0
    backend.close()


def test_dedup_backend_order_independence(backend_spec, tmp_path):
    """The same stream decided in different orders ends in the same state, in the
    backend and in the ledger readers apply; the live records are the truth."""
    stream = generate_stream(40, seed=21)
    results = []
    for index in range(4):
        subs = list(stream.subs)
        random.Random(index).shuffle(subs)
        backend = open_backend(fresh_spec(backend_spec, tmp_path, index))
        lines = io.BytesIO()
        for item in subs:
            lines.write(dedup_ledger.encode(backend.decide(item.key(), item.id, item.received_at_ms)))
        final = final_states(backend, subs)
        backend.close()
        ledger = DedupLedger.load([io.BytesIO(lines.getvalue())])
        assert {key: ledger.is_superseded(*key) for key in final} == final
        results.append(final)
    assert all(result == results[0] for result in results)
    assert {key[0]: key[1] for key, superseded in results[0].items() if not superseded} == stream.live


# --------------------------------------------------------------------------- concurrency


def test_dedup_backend_two_processes_lose_no_decision(backend_spec, tmp_path):
    """Two processes decide one stream at once, walking the sessions in the same
    order (so they collide on sessions); 10 % of submissions are decided by both.
    Every submission gets exactly one decision (the second of a pair is a replay
    of the first), and every session ends with exactly the one true live record."""
    stream = generate_stream(150, seed=5)
    rng = random.Random(1)
    halves: list[list[Sub]] = [[], []]
    both = set()
    for item in stream.subs:
        if rng.random() < 0.1:
            both.add(item)
            halves[0].append(item)
            halves[1].append(item)
        else:
            halves[rng.randrange(2)].append(item)
    for half in halves:
        half.sort(key=lambda s: (s.id, s.received_at_ms))
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    ledger_dir = tmp_path / "ledger"
    processes = [context.Process(target=decide_in_process,
                                 args=(backend_spec, halves[i], str(ledger_dir), f"node{i}", barrier))
                 for i in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0

    files = finished_ledger_files(tmp_path)
    assert len(files) == 2
    decisions = collections.defaultdict(list)
    for path in files:
        for line in path.read_bytes().splitlines():
            if line.startswith(b"D\t"):
                _, version, record_id, digest, received, outcome = line.decode().split("\t")
                decisions[(record_id, digest, int(received))].append((int(version), outcome))
    assert len(decisions) == len(stream.subs)  # no submission without a decision
    for item in stream.subs:
        made = decisions[(item.id, item.hash, item.received_at_ms)]
        assert len(made) == (2 if item in both else 1)
        assert len(set(made)) == 1  # the second decision of a pair is the first one, replayed

    backend = open_backend(backend_spec)
    final = final_states(backend, stream.subs)
    backend.close()
    ledger = DedupLedger.load(files)
    assert {key: ledger.is_superseded(*key) for key in final} == final
    live = collections.defaultdict(list)
    for (record_id, digest), superseded in final.items():
        if not superseded:
            live[record_id].append(digest)
    assert {k: v for k, v in live.items()} == {k: [v] for k, v in stream.live.items()}


def test_dedup_redis_lost_race_is_decided_again_on_the_new_state(redis_server):
    """Another node decides on the same session between this node's read and its
    write: the compare-and-set fails and the decision is made on the new state."""
    prefix = f"test:{uuidlib.uuid4().hex}:"
    other = RedisDedupBackend(redis_server.url, prefix=prefix)
    sid = uuid(1)
    first = Sub(sid, "idle-daily", b"1", T0)
    other.decide(first.key(), first.id, first.received_at_ms)
    newer = Sub(sid, "idle-daily", b"3", T0 + 2 * DAY_MS)
    middle = Sub(sid, "idle-daily", b"2", T0 + DAY_MS)
    calls = []

    def racing_clock() -> float:  # called between this node's read and its write
        calls.append(1)
        if len(calls) == 2:  # after the first (guessed) attempt, on the real state
            other.decide(newer.key(), newer.id, newer.received_at_ms)
        return time.time()

    backend = RedisDedupBackend(redis_server.url, prefix=prefix, clock=racing_clock)
    decision = backend.decide(middle.key(), middle.id, middle.received_at_ms)
    assert backend.stats.conflicts == 1 and len(calls) == 3
    assert decision.outcome == "stale"  # decided again, knowing the newer idle-daily
    state = backend.session_state(sid)
    assert state.live().body_hash == newer.hash and state.live_count() == 1
    backend.close()
    other.close()


# --------------------------------------------------------------------------- restarts and faults


def test_dedup_sqlite_decisions_survive_a_restart(tmp_path):
    stream = generate_stream(30, seed=8)
    first, second = stream.subs[:50], stream.subs[50:]
    backend = SqliteDedupBackend(tmp_path / "d.sqlite")
    before = [backend.decide(s.key(), s.id, s.received_at_ms) for s in first]
    backend.sync()
    backend.close()
    backend = SqliteDedupBackend(tmp_path / "d.sqlite")
    replayed = [backend.decide(s.key(), s.id, s.received_at_ms) for s in first]
    assert all(d.replayed for d in replayed if d.outcome != "not_applicable")
    assert [(d.outcome, d.version, d.changes) for d in replayed] == [(d.outcome, d.version, d.changes) for d in before]
    for item in second:
        backend.decide(item.key(), item.id, item.received_at_ms)
    assert {k[0]: k[1] for k, s in final_states(backend, stream.subs).items() if not s} == stream.live
    backend.close()


def test_dedup_redis_decisions_survive_a_redis_crash(tmp_path):
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    try:
        stream = generate_stream(30, seed=8)
        first, second = stream.subs[:50], stream.subs[50:]
        backend = RedisDedupBackend(server.url, retry_s=0)
        before = [backend.decide(s.key(), s.id, s.received_at_ms) for s in first]
        server.kill()
        server.start()  # same port, same append-only file
        replayed = [backend.decide(s.key(), s.id, s.received_at_ms) for s in first]
        assert all(d.replayed for d in replayed if d.outcome != "not_applicable")
        assert [(d.outcome, d.changes) for d in replayed] == [(d.outcome, d.changes) for d in before]
        for item in second:
            backend.decide(item.key(), item.id, item.received_at_ms)
        assert {k[0]: k[1] for k, s in final_states(backend, stream.subs).items() if not s} == stream.live
        backend.close()
    finally:
        server.stop()


def test_dedup_redis_down_fails_after_the_retry_window_and_records_nothing(tmp_path):
    """The documented behaviour: retry with back-off for dedup.redis_retry_s,
    then DedupUnavailableError (the processor keeps its input); nothing is
    guessed or skipped, and once Redis is back the same submission is decided."""
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    try:
        backend = RedisDedupBackend(server.url, retry_s=0.4, timeout_s=0.5)
        first = Sub(uuid(1), "idle-daily", b"1", T0)
        kept = backend.decide(first.key(), first.id, first.received_at_ms)
        server.kill()
        second = Sub(uuid(1), "idle-daily", b"2", T0 + DAY_MS)
        started = time.monotonic()
        with pytest.raises(DedupUnavailableError, match=r"Redis dedup backend at 127.0.0.1:\d+ is unavailable .* "
                                                        r"gave up after 0.4s of retries, nothing was recorded"):
            backend.decide(second.key(), second.id, second.received_at_ms)
        assert 0.4 <= time.monotonic() - started < 3
        assert backend.stats.unavailable == 1 and backend.stats.retries >= 2
        server.start()
        decision = backend.decide(second.key(), second.id, second.received_at_ms)
        assert decision.outcome == "superseded_earlier" and not decision.replayed
        assert backend.decide(first.key(), first.id, first.received_at_ms).version == kept.version
        backend.close()
    finally:
        server.stop()


def test_dedup_redis_back_within_the_retry_window_loses_nothing(tmp_path):
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    try:
        backend = RedisDedupBackend(server.url, retry_s=15, timeout_s=0.5)
        item = Sub(uuid(1), "idle-daily", b"1", T0)
        server.kill()
        restarter = threading.Timer(0.5, server.start)
        restarter.start()
        decision = backend.decide(item.key(), item.id, item.received_at_ms)
        restarter.join()
        assert decision.outcome == "kept" and backend.stats.retries >= 1
        backend.close()
    finally:
        server.stop()


def test_dedup_sqlite_lock_held_too_long_is_unavailable(tmp_path):
    import sqlite3

    path = tmp_path / "d.sqlite"
    backend = SqliteDedupBackend(path, lock_timeout_s=0.2)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    item = Sub(uuid(1), "idle-daily", b"1", T0)
    with pytest.raises(DedupUnavailableError, match="could not decide .*database is locked.*nothing was recorded"):
        backend.decide(item.key(), item.id, item.received_at_ms)
    other.execute("ROLLBACK")
    assert backend.decide(item.key(), item.id, item.received_at_ms).outcome == "kept"
    other.close()
    backend.close()


# --------------------------------------------------------------------------- expiry


def test_dedup_sqlite_expiry_drops_idle_sessions_only(tmp_path):
    clock = [T0 / 1000]
    backend = SqliteDedupBackend(tmp_path / "d.sqlite", expire_days=30, clock=lambda: clock[0])
    abandoned = Sub(uuid(1), "idle-daily", b"1", T0)
    active = Sub(uuid(2), "idle-daily", b"2", T0)
    backend.decide(abandoned.key(), abandoned.id, abandoned.received_at_ms)
    clock[0] += 20 * 86400
    backend.decide(active.key(), active.id, active.received_at_ms)
    clock[0] += 11 * 86400  # 31 days after the first session's last decision, 11 after the second's
    assert backend.expire() == 1
    assert backend.session_state(uuid(1)) is None and backend.session_state(uuid(2)) is not None
    # After expiry a late idle-daily of the abandoned session starts afresh.
    late = Sub(uuid(1), "idle-daily", b"late", T0 + 40 * DAY_MS)
    assert backend.decide(late.key(), late.id, late.received_at_ms).outcome == "kept"
    clock[0] += 31 * 86400  # decide() also expires on its own, every few minutes
    other = Sub(uuid(3), "idle-daily", b"3", T0)
    backend.decide(other.key(), other.id, other.received_at_ms)
    assert backend.sessions() == 1 and backend.stats.expired == 3
    backend.close()


def test_dedup_redis_expiry_is_a_time_to_live(redis_server):
    prefix = f"test:{uuidlib.uuid4().hex}:"
    backend = RedisDedupBackend(redis_server.url, prefix=prefix)
    item = Sub(uuid(1), "idle-daily", b"1", T0)
    backend.decide(item.key(), item.id, item.received_at_ms)
    ttl = backend.redis.pttl(prefix + uuid(1))
    assert 30 * DAY_MS - 60_000 < ttl <= 30 * DAY_MS
    short = RedisDedupBackend(redis_server.url, prefix=prefix + "short:", expire_days=0.000005)  # 0.43 s
    short.decide(item.key(), item.id, item.received_at_ms)
    assert short.session_state(uuid(1)) is not None
    time.sleep(0.6)
    assert short.session_state(uuid(1)) is None
    backend.close()
    short.close()


# --------------------------------------------------------------------------- end to end


def node_engine(data_dir: Path, node: str, **overrides) -> Engine:
    pm = make_plugin_manager()
    for module in (dedup_rules, dedup_sqlite, dedup_redis, dedup_ledger):
        pm.register(module)
    assignments = [f"data_dir={data_dir}", f"node_id={node}"] + [f"{k}={v}" for k, v in overrides.items()]
    return Engine.from_plugin_manager(pm, read_config(None, assignments))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dedup_end_to_end_unique_sessions(backend, tmp_path, request):
    """A generated stream, cut into spool files processed in random order by two
    workers (SQLite: two processes of one node; Redis: two nodes), stored
    append-only; the ledger files are published next to the data; a job that
    counts records with --dedup gets one record per session, the true one."""
    stream = generate_stream(300, seed=42)
    if backend == "sqlite":
        engines = [node_engine(tmp_path / "node", "n1")] * 2
    else:
        server = request.getfixturevalue("redis_server")
        settings = {"dedup.backend": "redis", "dedup.redis_url": server.url,
                    "dedup.redis_prefix": f"e2e-{uuidlib.uuid4().hex}."}
        engines = [node_engine(tmp_path / f"node{i}", f"n{i}", **settings) for i in range(2)]
    workers = [Deduplicator.from_engine(engine) for engine in engines]
    spool_files = [stream.subs[i:i + 25] for i in range(0, len(stream.subs), 25)]
    random.Random(3).shuffle(spool_files)
    stored: list[tuple[str, bytes]] = []  # the append-only main store: (id, stored JSON)
    invalid = []
    for index, spool in enumerate(spool_files):
        worker = workers[index % 2]
        for item in spool:
            try:
                worker.decide(record=item.record())
            except DuplicateRecord as duplicate:
                invalid.append(duplicate.decision)
                continue
            stored.append((item.id, item.body))
        worker.sync()
    for worker in workers:
        worker.close()

    archive = tmp_path / "archive"
    for engine in {id(e): e for e in engines}.values():
        for path in finished_ledger_files(engine.config.data_dir):  # what the publisher does
            (archive / "_ledger").mkdir(parents=True, exist_ok=True)
            (archive / ledger_archive_key(path)).write_bytes(path.read_bytes())
            path.unlink()

    assert len(stored) + len(invalid) == len(stream.subs)  # nothing dropped
    assert len(invalid) == stream.extra_copies
    (keep,) = engines[0].record_filters(job=JobSpec("count.py", {}, "out", str(archive), dedup=True))
    kept = [(record_id, body) for record_id, body in stored if keep(record_id, (), body=body)]
    per_session = collections.Counter(record_id for record_id, _ in kept)
    deduplicated = {record_id: dedup_rules.body_hash(body) for record_id, body in kept
                    if b'"anr"' not in body}
    assert len(per_session) == len(stream.live)  # the unique-session count
    assert len(kept) == len(stream.live) + stream.not_applicable
    assert deduplicated == stream.live
    assert len(stored) > len(kept)  # without --dedup the count would be inflated
