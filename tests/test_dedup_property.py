"""Property: however a node's submissions are spread over spool files and processor workers,
and in whatever order they are decided (retries of half-processed files included), readers see
exactly one live record per session -- the one the rules of docs/dedup.md rank highest.

Each run spreads a few hundred submissions (distinct bodies, byte-identical resends, some in the
same millisecond as their original, saved-sessions, kinds that are never de-duplicated) over
several spool files, decides them with one or two ``Deduplicator`` workers on the real backend
(each with its own ledger writer, as the processor's workers have), keeps what the processor
would store in the main store, and reads it back through the ledger the way ``telemetry
mapreduce --dedup`` does.  The expected answer is a model computed from the ranking rule alone."""

from __future__ import annotations

import json
import random
import uuid as uuidlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from telemetry_core.dedup.deduplicator import Deduplicator, DuplicateRecord
from telemetry_core.dedup.ledger import LEDGER_DIR, DedupLedger
from telemetry_core.dedup.rules import DEDUPLICATED_KINDS, SAVED_SESSION

from dedup_helpers import T0, RedisServer, Sub, uuid
from process_helpers import processor_engine

SESSIONS = 90
RUNS = [(seed, workers) for seed in range(8) for workers in (1, 2)]


@dataclass(frozen=True)
class Copy:
    """One submission as a spool file holds it."""

    sub: Sub
    file: str
    offset: int

    def record(self):
        record = self.sub.record()
        record.source = f"{self.file}:{self.offset}"  # what the processor's decoder sets
        return record


def submissions(rng: random.Random) -> list[Sub]:
    """Sessions of 1-3 distinct idle-dailies (sometimes two in one millisecond), 40 % ending in a
    saved-session; a fifth of submissions resent byte-identical, half of those in the same
    millisecond (two edge workers), the others later; a few kinds that are never de-duplicated."""
    subs = []
    for index in range(SESSIONS):
        sid = uuid(1000 + index)
        start = T0 + rng.randrange(5000)
        sends = []
        for day in range(rng.randint(1, 3)):
            ms = start + day * rng.choice([0, 1, 3, 1000])  # 0: two distinct idle-dailies in one ms
            sends.append(Sub(sid, "idle-daily", json.dumps({"s": index, "day": day}).encode(), ms))
        if rng.random() < 0.4:
            sends.append(Sub(sid, SAVED_SESSION, json.dumps({"s": index, "end": 1}).encode(),
                             sends[-1].received_at_ms + rng.choice([0, 1, 500])))
        for original in list(sends):
            if rng.random() < 0.2:
                later = rng.choice([0, 0, 1, 2000])  # 0: resent at once, spooled by the other edge worker
                sends.append(Sub(sid, original.kind, original.body, original.received_at_ms + later))
        if rng.random() < 0.1:
            sends.append(Sub(sid, "android-anr-report", json.dumps({"s": index, "anr": 1}).encode(), start + 7))
        subs.extend(sends)
    return subs


def expected_live(subs: list[Sub]) -> dict[str, tuple[str, str]]:
    """The model: per session, the content ranked highest by (saved-session, first receive time,
    body hash, record id), computed from the submissions without the backend's code."""
    first_ms: dict[tuple[str, str], int] = {}
    kind: dict[tuple[str, str], str] = {}
    for item in subs:
        if item.kind in DEDUPLICATED_KINDS:
            content = (item.id, item.hash)
            first_ms[content] = min(first_ms.get(content, item.received_at_ms), item.received_at_ms)
            kind[content] = item.kind
    best: dict[str, tuple] = {}
    for (record_id, digest), ms in first_ms.items():
        rank = (kind[(record_id, digest)] == SAVED_SESSION, ms, digest, record_id)
        if record_id not in best or rank > best[record_id]:
            best[record_id] = rank
    return {record_id: (kind_of(rank), rank[2]) for record_id, rank in best.items()}


def kind_of(rank: tuple) -> str:
    return SAVED_SESSION if rank[0] else "idle-daily"


def spool_files(rng: random.Random, subs: list[Sub], count: int) -> list[list[Copy]]:
    """The submissions in a random order, dealt to ``count`` spool files."""
    shuffled = subs[:]
    rng.shuffle(shuffled)
    files: list[list[Sub]] = [[] for _ in range(count)]
    for item in shuffled:
        files[rng.randrange(count)].append(item)
    return [[Copy(item, f"n1.{100 + number}.{T0}.1.log", offset * 100) for offset, item in enumerate(items)]
            for number, items in enumerate(files)]


def process(rng: random.Random, workers: list[Deduplicator], files: list[list[Copy]]) -> list[Copy]:
    """Decide every copy the way processor workers do, interleaved at random; now and then a
    worker's attempt at a file dies halfway (its decisions made, its output discarded) and the file
    is processed again from its start.  Returns what lands in the main store."""
    queue = list(range(len(files)))
    rng.shuffle(queue)
    current: dict[int, tuple[int, int, list[Copy]]] = {}  # worker -> (file, next offset, stored so far)
    main_store: list[Copy] = []
    while queue or current:
        idle = [w for w in range(len(workers)) if w not in current]
        if queue and idle:
            current[rng.choice(idle)] = (queue.pop(0), 0, [])
            continue
        worker = rng.choice(sorted(current))
        number, position, stored = current[worker]
        copies = files[number]
        if position < len(copies) and rng.random() < 0.01:  # the attempt dies; the file is retried
            del current[worker]
            queue.insert(rng.randrange(len(queue) + 1), number)
            continue
        if position == len(copies):  # committed: its records are in the main store
            workers[worker].sync()
            main_store.extend(stored)
            del current[worker]
            continue
        copy = copies[position]
        try:
            workers[worker].decide(record=copy.record())
            stored.append(copy)
        except DuplicateRecord:
            pass  # stored under invalid/duplicate/, outside the main store
        current[worker] = (number, position + 1, stored)
    return main_store


def read_live(main_store: list[Copy], ledger_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """Each session's live records, as the ``--dedup`` read-time filter sees them."""
    keep = DedupLedger.load(sorted(ledger_dir.glob("*.ledger*"))).record_filter()
    live = defaultdict(list)
    for copy in main_store:
        item = copy.sub
        if item.kind in DEDUPLICATED_KINDS and keep(item.id, (), body=item.body):
            live[item.id].append((item.kind, item.hash))
    return live


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def backend_overrides(request):
    if request.param == "sqlite":
        return ["dedup.backend=sqlite"]
    server = request.getfixturevalue("redis_server")
    return ["dedup.backend=redis", f"dedup.redis_url={server.url}"]


def test_dedup_one_live_record_per_session_in_every_interleaving(tmp_path, backend_overrides):
    outcomes: Counter = Counter()
    for seed, worker_count in RUNS:
        rng = random.Random(seed * 10 + worker_count)
        subs = submissions(rng)
        data_dir = tmp_path / f"run-{seed}-{worker_count}"
        prefix = f'dedup.redis_prefix="t{uuidlib.uuid4().hex}:"'
        engine = processor_engine(data_dir, overrides=backend_overrides + [prefix])
        workers = [Deduplicator.from_engine(engine) for _ in range(worker_count)]
        files = spool_files(rng, subs, rng.randint(2, 5))
        main_store = process(rng, workers, files)
        for worker in workers:
            outcomes.update(worker.stats.outcomes)
            worker.close()

        expected = expected_live(subs)
        live = read_live(main_store, data_dir / LEDGER_DIR)
        wrong = {sid: live.get(sid, []) for sid in expected if live.get(sid, []) != [expected[sid]]}
        assert not wrong, (f"seed {seed}, {worker_count} workers: {len(wrong)} sessions without exactly "
                           f"their one live record (expected {[expected[s] for s in wrong]}): {wrong}")
        assert set(live) <= set(expected)
        contents = Counter((c.sub.id, c.sub.hash) for c in main_store)
        assert max(contents.values()) == 1  # every content stored once; other copies left the main store
        assert len(subs) > 200
    # the runs did exercise what they claim to: duplicates, late older contents, supersessions
    assert outcomes["duplicate"] and outcomes["stale"] and outcomes["superseded_earlier"], outcomes
