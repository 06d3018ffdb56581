"""The dedup ledger: writer (crash safety, rotation, orphans), reader (paths,
streams, S3), the read-time filter and its reduce hook, and the
Deduplicator the processor uses."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from greplin import scales

from telemetry_core import hookimpl
from telemetry_core.dedup import ledger as dedup_ledger
from telemetry_core.dedup import rules as dedup_rules
from telemetry_core.dedup import sqlite_backend as dedup_sqlite
from telemetry_core.dedup.deduplicator import Deduplicator, DuplicateRecord
from telemetry_core.dedup.ledger import (DedupLedger, LedgerFilterError, LedgerFormatError, LedgerWriter,
                                         finish_orphans, finished_ledger_files, ledger_archive_key)
from telemetry_core.dedup.rules import DedupKeyError, SessionState, decide
from telemetry_core.interfaces import JobSpec
from telemetry_core.records import Decision

from dedup_helpers import T0, Sub, generate_stream, uuid

REPO = Path(__file__).resolve().parent.parent


def decided(stream_subs: list[Sub]) -> tuple[list[Decision], dict[tuple[str, str], bool]]:
    """Decisions for ``stream_subs`` with the pure rules, and the final state of every content."""
    states: dict[str, SessionState] = {}
    decisions = []
    for now, item in enumerate(stream_subs, 1):
        decisions.append(decide(states.setdefault(item.id, SessionState()), item.key(), item.id,
                                item.received_at_ms, now_us=now))
    final = {(c.record_id, c.body_hash): c.superseded for s in states.values() for c in s.contents.values()}
    return decisions, final


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_dedup_ledger_round_trip_through_files(tmp_path):
    stream = generate_stream(80, seed=11)
    decisions, final = decided(stream.subs)
    writer = LedgerWriter(tmp_path / "ledger", "node-a", max_bytes=4096)
    for decision in decisions:
        writer.write(decision)
    writer.close()
    files = finished_ledger_files(tmp_path)
    assert len(files) > 1  # rotated by size
    assert all(f.name.startswith("node-a.") and f.name.endswith(".ledger") for f in files)
    assert not list((tmp_path / "ledger").glob("*.part"))
    assert files[0].read_bytes().startswith(b"# telemetry-dedup-ledger 1 node=node-a ")

    ledger = DedupLedger.load(reversed(files))  # any order
    assert ledger.decisions == len(stream.subs)
    assert {key: ledger.is_superseded(*key) for key in final} == final
    assert len(ledger) == sum(final.values())
    live = {key[0]: key[1] for key, superseded in final.items() if not superseded}
    assert live == stream.live

    again = DedupLedger.load(files + files)  # loading twice changes nothing
    assert sorted(again.superseded()) == sorted(ledger.superseded())


def test_dedup_ledger_reads_streams_that_only_read(tmp_path):
    decisions, final = decided(generate_stream(20, seed=2).subs)

    class Body:  # like botocore's StreamingBody: read(n) only
        def __init__(self, data: bytes) -> None:
            self.data = io.BytesIO(data)

        def read(self, size: int = -1) -> bytes:
            return self.data.read(min(size, 7))  # tiny chunks: lines span reads

    data = b"".join(dedup_ledger.encode(d) for d in decisions)
    ledger = DedupLedger()
    ledger.add(Body(data), name="s3://bucket/_ledger/x.ledger")
    assert {key: ledger.is_superseded(*key) for key in final} == final


def test_dedup_ledger_rotates_by_age_and_skips_empty_files(tmp_path):
    clock = Clock()
    writer = LedgerWriter(tmp_path, "n1", max_age_s=60, clock=clock)
    assert writer.close() is None and not list(tmp_path.iterdir())  # nothing written, nothing left
    decision = Decision("kept", uuid(1), body_hash="ab" * 16, received_at_ms=T0, version=5)
    writer.write(decision)
    first = writer.path
    clock.now += 61
    writer.sync()  # too old: finished at the sync
    assert writer.path is None and first.with_name(first.name[:-5]).exists()
    clock.now += 1
    writer.write(decision)
    assert writer.path != first
    writer.close()
    assert len(list(tmp_path.glob("*.ledger"))) == 2


def test_dedup_ledger_finishes_a_dead_writers_file_and_cuts_its_torn_line(tmp_path):
    """A writer process dies (os._exit) after a synced decision and half a line;
    the next writer finishes its file; a live writer's file is left alone."""
    script = f"""
import os, sys
sys.path.insert(0, {str(REPO)!r})
from telemetry_core.dedup.ledger import LedgerWriter
from telemetry_core.records import Decision
writer = LedgerWriter({str(tmp_path)!r}, "dead")
writer.write(Decision("kept", "{uuid(1)}", body_hash="{'ab' * 16}", received_at_ms=1, version=3,
                      changes=(("{uuid(2)}", "{'cd' * 16}", "superseded"),)))
writer.sync()
os.write(writer._file.fileno(), b"S\\t9\\t{uuid(3)}\\tef")  # torn: no newline
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    (dead_part,) = tmp_path.glob("dead.*.part")
    reader = DedupLedger.load([dead_part])  # a reader skips the torn line
    assert reader.torn == 1 and reader.is_superseded(uuid(2), "cd" * 16)

    live = LedgerWriter(tmp_path, "live")  # a new writer finishes orphans when it starts
    assert [p.name for p in live.finished] == [dead_part.name[:-5]]
    finished = live.finished[0]
    assert finished.read_bytes().endswith(f"S\t3\t{uuid(2)}\t{'cd' * 16}\n".encode())
    assert DedupLedger.load([finished]).torn == 0
    live.write(Decision("kept", uuid(4), body_hash="ab" * 16, received_at_ms=1, version=1))
    live.sync()
    assert finish_orphans(tmp_path) == []  # the live writer's file is left alone
    assert live.path.exists()
    live.close()


def test_dedup_ledger_rejects_malformed_lines_and_other_formats(tmp_path):
    good = f"S\t1\t{uuid(1)}\t{'ab' * 16}\n"
    bad = tmp_path / "bad.ledger"
    bad.write_text("# telemetry-dedup-ledger 1 node=x\n" + good + "S\t1\tnot-a-uuid\tab\n")
    with pytest.raises(LedgerFormatError, match=r"bad.ledger:3: not a ledger line"):
        DedupLedger.load([bad])
    future = tmp_path / "future.ledger"
    future.write_text("# telemetry-dedup-ledger 2 node=x\n" + good)
    with pytest.raises(LedgerFormatError, match="ledger format '2'; this version of telemetry-core reads format 1"):
        DedupLedger.load([future])
    with pytest.raises(ValueError, match="not a finished ledger file"):
        ledger_archive_key(tmp_path / "x.ledger.part")
    assert ledger_archive_key(tmp_path / "n1.20130910T000000Z.1.1.ledger") == "_ledger/n1.20130910T000000Z.1.1.ledger"
    with pytest.raises(ValueError, match="tabs or newlines"):
        dedup_ledger.encode(Decision("kept", "a\tb", body_hash="ab", version=1))


def test_dedup_ledger_filter_needs_the_body_only_when_it_matters():
    old, new = b'{"day":1}', b'{"day":2}'
    ledger = DedupLedger.load([io.BytesIO(f"S\t7\t{uuid(1)}\t{dedup_rules.body_hash(old)}\n".encode())])
    keep = ledger.record_filter()
    assert keep(uuid(2), ("idle-daily",)) is True  # nothing superseded under this id: no body needed
    assert keep(uuid(1), (), body=new) is True
    assert keep(uuid(1), (), body=old) is False
    assert keep(uuid(1).upper(), (), body_hash=dedup_rules.body_hash(old)) is False
    assert keep("not-a-uuid", ()) is True
    with pytest.raises(LedgerFilterError, match="the job runner must call filter"):
        keep(uuid(1), ())
    shipped = pickle.loads(pickle.dumps(keep))  # Spark ships the filter to its tasks
    assert shipped(uuid(1), (), body=old) is False and shipped(uuid(1), (), body=new) is True


def test_dedup_ledger_compacts_to_the_same_answers(tmp_path):
    decisions, final = decided(generate_stream(40, seed=5).subs)
    ledger = DedupLedger.load([io.BytesIO(b"".join(dedup_ledger.encode(d) for d in decisions))])
    compact = io.BytesIO()
    lines = ledger.write_compact(compact)
    assert lines == len(ledger) == sum(final.values())
    compact.seek(0)
    again = DedupLedger.load([compact])
    assert sorted(again.superseded()) == sorted(ledger.superseded())
    # A later L line still revives a compacted S line (versions are kept).
    record_id, digest = next(again.superseded())
    version = max(d.version for d in decisions) + 1
    again.add(io.BytesIO(f"L\t{version}\t{record_id}\t{digest}\n".encode()))
    assert not again.is_superseded(record_id, digest)


# --------------------------------------------------------------------------- the Deduplicator


class Observer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    @hookimpl
    def telemetry_dedup_decided(self, record, decision):
        self.seen.append((record.id, decision.outcome))


@pytest.fixture
def dedup_engine(make_engine, pm):
    for module in (dedup_rules, dedup_sqlite, dedup_ledger):
        pm.register(module)
    observer = Observer()
    engine = make_engine(observer, node_id="n1")
    return engine, observer


def test_dedup_deduplicator_records_counts_and_raises_for_duplicates(dedup_engine, tmp_path):
    engine, observer = dedup_engine
    dedup = Deduplicator.from_engine(engine)
    day1 = Sub(uuid(1), "idle-daily", b'{"d":1}', T0)
    day2 = Sub(uuid(1), "idle-daily", b'{"d":2}', T0 + 86_400_000)
    assert dedup.decide(record=day1.record()).outcome == "kept"
    assert dedup.decide(record=day2.record()).outcome == "superseded_earlier"
    with pytest.raises(DuplicateRecord, match="exact resubmission") as caught:
        dedup.decide(record=Sub(uuid(1), "idle-daily", b'{"d":2}', T0 + 86_400_000 + 9).record())
    assert caught.value.category == "duplicate" and caught.value.decision.outcome == "duplicate"
    assert dedup.decide(record=Sub(uuid(2), "OTHER", b"{}", T0).record()).outcome == "not_applicable"
    bad = Sub("not-a-uuid", "idle-daily", b"{}", T0).record()
    with pytest.raises(DedupKeyError, match="not a UUID"):
        dedup.decide(record=bad)
    assert dedup.decide(record=day2.record()).replayed  # a retried spool file gets the same answer
    dedup.sync()
    assert dedup.rotate_ledger() is not None
    dedup.close()

    assert observer.seen == [(uuid(1), "kept"), (uuid(1), "superseded_earlier"), (uuid(1), "duplicate"),
                             (uuid(2), "not_applicable"), (uuid(1), "superseded_earlier")]
    stats = scales.getStats()["dedup"]
    assert stats["decisions"] == 5 and stats["replayed"] == 1 and stats["rejected"] == 1
    assert dict(stats["outcomes"]) == {"kept": 1, "superseded_earlier": 2, "duplicate": 1, "not_applicable": 1}
    ledger = DedupLedger.load(finished_ledger_files(engine.config.data_dir))
    assert ledger.decisions == 5
    assert ledger.is_superseded(uuid(1), day1.hash) and not ledger.is_superseded(uuid(1), day2.hash)
    assert (engine.config.data_dir / "state" / "dedup.sqlite").exists()


def test_dedup_deduplicator_tells_same_millisecond_copies_apart_by_spool_location(dedup_engine):
    engine, _ = dedup_engine
    dedup = Deduplicator.from_engine(engine)
    first, second = (Sub(uuid(1), "idle-daily", b'{"d":1}', T0).record() for _ in range(2))
    first.source, second.source = "n1.1.100.1.log:0", "n1.2.100.1.log:0"  # two edge workers' spool files
    assert dedup.decide(record=first).outcome == "kept"
    with pytest.raises(DuplicateRecord):
        dedup.decide(record=second)
    assert dedup.decide(record=first).replayed  # a retry of the first file
    dedup.close()


class LegacyBackend:
    """A third-party backend written before ``copy_id`` existed."""

    name = "legacy"

    def __init__(self) -> None:
        self.states: dict[str, SessionState] = {}

    def decide(self, key, record_id, received_at_ms):
        state = self.states.setdefault(key.session, SessionState())
        return dedup_rules.decide(state, key, record_id, received_at_ms, now_us=len(self.states) + 1)

    def close(self) -> None:
        pass


def test_dedup_deduplicator_keeps_working_with_a_backend_without_copy_id(dedup_engine, caplog):
    engine, _ = dedup_engine
    dedup = Deduplicator(engine, LegacyBackend(), None)
    assert "does not accept copy_id" in caplog.text
    record = Sub(uuid(1), "idle-daily", b'{"d":1}', T0).record()
    record.source = "n1.1.100.1.log:0"
    assert dedup.decide(record=record).outcome == "kept"
    with pytest.raises(DuplicateRecord):
        dedup.decide(record=Sub(uuid(1), "idle-daily", b'{"d":1}', T0 + 1).record())
    dedup.close()


def test_dedup_backend_is_chosen_by_config(dedup_engine, make_engine, pm):
    engine, _ = dedup_engine
    assert engine.dedup_backend().name == "sqlite"
    from telemetry_core.dedup import redis_backend as dedup_redis
    from telemetry_core.errors import ConfigError

    pm.register(dedup_redis)
    with pytest.raises(ConfigError, match="dedup.redis_url: dedup.backend is redis but dedup.redis_url is not set"):
        make_engine(**{"dedup.backend": "redis"}).dedup_backend()
    with pytest.raises(ConfigError, match="no installed plugin provides dedup backend 'cassandra'"):
        make_engine(**{"dedup.backend": "cassandra"}).dedup_backend()

    class Mine:
        name = "mine"

        @hookimpl
        def telemetry_dedup_backend(self, engine):
            return self

    pm.register(Mine())
    assert make_engine().dedup_backend().name == "mine"  # a third-party answer wins over the built-in


# --------------------------------------------------------------------------- the reduce hook


def test_dedup_reduce_filter_reads_the_archive_and_the_local_ledger(dedup_engine, pm):
    """Finished ledger files published to the local archive's _ledger/ (through the
    real publisher), plus a newer decision only in this node's open ledger file;
    with no --input the job reads the configured archive."""
    from telemetry_core.store import local as publish_local
    from telemetry_core.store.local import sha256_of

    pm.register(publish_local)
    engine, _ = dedup_engine
    publisher = engine.publisher()
    dedup = Deduplicator.from_engine(engine)
    old = Sub(uuid(1), "idle-daily", b'{"d":1}', T0)
    new = Sub(uuid(1), "idle-daily", b'{"d":2}', T0 + 1000)
    dedup.decide(record=old.record())
    dedup.decide(record=new.record())
    dedup.close()
    for path in finished_ledger_files(engine.config.data_dir):  # what the processor's publisher does
        publisher.publish(str(path), ledger_archive_key(path), checksum=sha256_of(path))
        path.unlink()
    assert [o.key.split(".")[0] for o in publisher.list("_ledger/")] == ["_ledger/n1"]
    dedup = Deduplicator.from_engine(engine)
    newest = Sub(uuid(1), "saved-session", b'{"end":1}', T0 + 5000)
    dedup.decide(record=newest.record())
    dedup.sync()

    assert engine.record_filters(job=JobSpec("job.py", {}, "out", publisher.uri)) == []  # no --dedup
    for uri in (publisher.uri, str(engine.config.data_dir / "archive"), ""):
        (keep,) = engine.record_filters(job=JobSpec("job.py", {}, "out", uri, dedup=True))
        assert [keep(uuid(1), (), body=s.body) for s in (old, new, newest)] == [False, False, True]
    dedup.close()


@pytest.fixture
def s3_endpoint(monkeypatch):
    from moto.server import ThreadedMotoServer

    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_dedup_reduce_filter_streams_the_ledger_from_s3(make_engine, pm, s3_endpoint, tmp_path):
    pm.register(dedup_ledger)
    engine = make_engine(**{"store.publish.endpoint_url": s3_endpoint})
    decisions, final = decided(generate_stream(30, seed=9).subs)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="telemetry")
    half = len(decisions) // 2
    for index, part in enumerate((decisions[:half], decisions[half:])):
        body = b"# telemetry-dedup-ledger 1 node=n\n" + b"".join(dedup_ledger.encode(d) for d in part)
        client.put_object(Bucket="telemetry", Key=f"v2/_ledger/n{index}.20130910T000000Z.1.1.ledger", Body=body)
    client.put_object(Bucket="telemetry", Key="v2/saved-session/x.log.xz", Body=b"not a ledger")

    (keep,) = engine.record_filters(job=JobSpec("job.py", {}, "out", "s3://telemetry/v2", dedup=True))
    superseded = {key for key, value in final.items() if value}
    assert {key for key in final if not keep(key[0], (), body_hash=key[1])} == superseded
    assert os.environ["AWS_ACCESS_KEY_ID"] == "test"


def test_dedup_ledger_file_published_while_a_reader_lists_is_still_read(tmp_path):
    """The processor finishes, publishes and deletes a node's ledger file at any moment; a reader
    that lists the archive before the node's own directory could miss it in both. Local files are
    listed first (open ones, then finished ones), the archive last, so it is read in one of them."""
    data_dir, archive = tmp_path / "node", tmp_path / "archive"
    old, new = Sub(uuid(1), "idle-daily", b'{"d":1}', T0), Sub(uuid(1), "idle-daily", b'{"d":2}', T0 + 1)
    state = SessionState()
    published = LedgerWriter(archive / "_ledger", "n0")  # another node's file
    published.write(decide(state, new.key(), new.id, new.received_at_ms, now_us=2, copy_id="a:0"))
    published.close()
    local = LedgerWriter(data_dir / dedup_ledger.LEDGER_DIR, "n1")
    local.write(decide(state, old.key(), old.id, old.received_at_ms, now_us=3, copy_id="b:0"))  # stale: S old
    finished = local.close()
    ledger = DedupLedger()
    for index, (name, opener) in enumerate(dedup_ledger.ledger_sources(str(archive), data_dir=data_dir)):
        if index == 0:  # between this reader's listings the processor publishes the local file
            os.rename(finished, archive / "_ledger" / finished.name)
        try:
            stream = opener()
        except FileNotFoundError:
            continue
        with stream:
            ledger.add(stream, name=name)
    assert ledger.is_superseded(uuid(1), old.hash)
