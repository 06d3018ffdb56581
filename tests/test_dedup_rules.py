"""The dedup rules (telemetry_core.dedup.rules): the decisions table of
docs/dedup.md, replays, order independence, malformed input, the key hook."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from telemetry_core.dedup import rules
from telemetry_core.dedup.ledger import DedupLedger, encode
from telemetry_core.dedup.rules import DedupKeyError, SessionState, body_hash, decide
from telemetry_core.records import DedupKey, Record

from dedup_helpers import DAY_MS, T0, Sub, generate_stream, uuid

SID = uuid(1)


def sub(kind: str, body: str, ms: int, sid: str = SID) -> Sub:
    return Sub(sid, kind, body.encode(), ms)


class Session:
    """One session's state plus the clock, deciding submissions in order."""

    def __init__(self) -> None:
        self.state = SessionState()
        self.now = 1

    def __call__(self, item: Sub):
        self.now += 1
        decision = decide(self.state, item.key(), item.id, item.received_at_ms, now_us=self.now)
        assert self.state.live_count() <= 1
        return decision


def test_dedup_decisions_table():
    session = Session()
    day1, day2, day3 = sub("idle-daily", "d1", T0), sub("idle-daily", "d2", T0 + DAY_MS), \
        sub("idle-daily", "d3", T0 + 2 * DAY_MS)
    saved = sub("saved-session", "end", T0 + 2 * DAY_MS + 5)

    first = session(day2)
    assert (first.outcome, first.changes, first.supersedes) == ("kept", (), ())
    late = session(day1)  # an older idle-daily arriving after a newer one
    assert late.outcome == "stale"
    assert late.changes == ((SID, day1.hash, "superseded"),)
    newer = session(day3)
    assert newer.outcome == "superseded_earlier"
    assert newer.supersedes == (SID,)
    assert newer.changes == ((SID, day2.hash, "superseded"),)
    resent = session(sub("idle-daily", "d3", T0 + 2 * DAY_MS + 60_000))  # exact resubmission, later
    assert (resent.outcome, resent.changes) == ("duplicate", ())
    end = session(saved)
    assert end.outcome == "superseded_earlier"
    assert end.changes == ((SID, day3.hash, "superseded"),)
    after = session(sub("idle-daily", "d4", T0 + 3 * DAY_MS))  # an idle-daily after the saved-session
    assert after.outcome == "stale"
    other = session(sub("android-anr-report", "anr", T0))
    assert (other.outcome, other.version, other.changes) == ("not_applicable", 0, ())
    assert session.state.live().body_hash == saved.hash
    versions = [d.version for d in (first, late, newer, resent, end, after)]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


def test_dedup_replay_returns_the_first_decision_unchanged():
    session = Session()
    a, b = sub("idle-daily", "a", T0), sub("idle-daily", "b", T0 + DAY_MS)
    session(a)
    decided = session(b)
    version = session.state.version
    again = session(b)
    assert again.replayed and not decided.replayed
    assert (again.outcome, again.changes, again.version) == (decided.outcome, decided.changes, decided.version)
    assert session.state.version == version  # nothing was written


def test_dedup_an_earlier_copy_can_make_a_record_live_again():
    """X sent at t1, Y at t2, X again at t3; decided in the order X@t3, Y, X@t1.
    X's first receive time drops from t3 to t1, so Y is the latest: the
    ledger says X superseded and Y live again (an L line)."""
    session = Session()
    x1, y, x3 = sub("idle-daily", "x", T0), sub("idle-daily", "y", T0 + DAY_MS), sub("idle-daily", "x", T0 + 2 * DAY_MS)
    assert session(x3).outcome == "kept"
    assert session(y).outcome == "stale"
    late = session(x1)
    assert late.outcome == "duplicate"
    assert set(late.changes) == {(SID, x1.hash, "superseded"), (SID, y.hash, "live")}
    ledger = DedupLedger.load([_ledger_bytes(session.state)])
    assert ledger.is_superseded(SID, x1.hash) and not ledger.is_superseded(SID, y.hash)


def test_dedup_same_time_ties_are_broken_by_body_hash():
    a, b = sub("idle-daily", "a", T0), sub("idle-daily", "b", T0)
    winner = max(a.hash, b.hash)
    for order in ((a, b), (b, a)):
        session = Session()
        for item in order:
            session(item)
        assert session.state.live().body_hash == winner


def _final(subs: list[Sub]) -> dict[tuple[str, str], bool]:
    states: dict[str, SessionState] = {}
    for now, item in enumerate(subs, 1):
        decide(states.setdefault(item.id, SessionState()), item.key(), item.id, item.received_at_ms, now_us=now)
    return {(c.record_id, c.body_hash): c.superseded for s in states.values() for c in s.contents.values()}


def _ledger_bytes(*states: SessionState):
    import io

    data = b"".join(encode(d) for s in states for d in sorted(s.decisions.values(), key=lambda d: d.version))
    return io.BytesIO(data)


def test_dedup_order_independence_exhaustive():
    """Every permutation of a session's submissions ends in the same state, in
    the backend and as the ledger tells readers."""
    items = [sub("idle-daily", "x", T0), sub("idle-daily", "y", T0 + DAY_MS), sub("idle-daily", "x", T0 + 2 * DAY_MS),
             sub("idle-daily", "z", T0 + 2 * DAY_MS + 1), sub("saved-session", "s", T0 + 3 * DAY_MS),
             sub("idle-daily", "z", T0 + 1)]
    expected = None
    for order in itertools.permutations(items):
        states: dict[str, SessionState] = {}
        for now, item in enumerate(order, 1):
            state = states.setdefault(item.id, SessionState())
            decide(state, item.key(), item.id, item.received_at_ms, now_us=now)
            assert state.live_count() == 1
        final = {(c.record_id, c.body_hash): c.superseded for c in states[SID].contents.values()}
        ledger = DedupLedger.load([_ledger_bytes(*states.values())])
        seen = {key: ledger.is_superseded(*key) for key in final}
        assert seen == final
        expected = expected or final
        assert final == expected
    assert [key for key, superseded in expected.items() if not superseded] == [(SID, body_hash(b"s"))]


def test_dedup_order_independence_on_a_generated_stream():
    stream = generate_stream(60, seed=7)
    results = []
    for seed in range(5):
        subs = list(stream.subs)
        random.Random(seed).shuffle(subs)
        results.append(_final(subs))
    assert all(result == results[0] for result in results)
    live = {record_id: digest for (record_id, digest), superseded in results[0].items() if not superseded}
    assert live == stream.live


@pytest.mark.parametrize("record_id, key, message", [
    ("not-a-uuid", None, "record id 'not-a-uuid' is not a UUID"),
    (uuid(1) + "0", None, "is not a UUID"),
    (uuid(1), DedupKey("bad session!", "idle-daily", "ab" * 16), "session 'bad session!'"),
    (uuid(1), DedupKey(uuid(1), "idle-daily", "XYZ"), "body hash 'XYZ' is not 16-128 lower-case hex digits"),
    (uuid(1), DedupKey(uuid(1), "idle-daily", "ab" * 16 + "a"), "body hash"),
])
def test_dedup_malformed_ids_are_rejected(record_id, key, message):
    key = key or DedupKey("s1", "idle-daily", "ab" * 16)
    with pytest.raises(DedupKeyError, match=message) as caught:
        decide(SessionState(), key, record_id, T0, now_us=1)
    assert caught.value.category == "invalid_dedup_key"


def test_dedup_bad_receive_time_is_rejected():
    with pytest.raises(DedupKeyError, match="received_at_ms -1"):
        decide(SessionState(), DedupKey(SID, "idle-daily", "ab" * 16), SID, -1, now_us=1)
    with pytest.raises(DedupKeyError, match="received_at_ms True"):
        decide(SessionState(), DedupKey(SID, "idle-daily", "ab" * 16), SID, True, now_us=1)


def test_dedup_upper_case_ids_are_the_same_session():
    session = Session()
    first = session(sub("idle-daily", "a", T0, sid=SID.upper()))
    assert first.record_id == SID
    assert session(sub("idle-daily", "a", T0 + 5, sid=SID)).outcome == "duplicate"


def test_dedup_state_round_trips_and_refuses_garbage():
    session = Session()
    for item in generate_stream(5, seed=3).subs:
        if item.id == uuid(1):
            session(item)
    copy = SessionState.from_bytes(session.state.to_bytes())
    assert copy == session.state
    with pytest.raises(rules.DedupStateError, match="unreadable"):
        SessionState.from_bytes(b"{not json")
    with pytest.raises(rules.DedupStateError, match="format 3"):
        SessionState.from_bytes(b'{"format": 3}')


def test_copies_in_the_same_millisecond_are_two_submissions():
    """Issue #16: two edge workers spool byte-identical copies with one receive time. Only a retry
    of the same copy (same copy id) replays; the other copy is a duplicate, whichever comes first."""
    state = SessionState()
    item = sub("idle-daily", "d1", T0)
    first = decide(state, item.key(), item.id, T0, now_us=1, copy_id="n1.1.100.1.log:0")
    assert (first.outcome, first.replayed) == ("kept", False)
    retry = decide(state, item.key(), item.id, T0, now_us=2, copy_id="n1.1.100.1.log:0")
    assert (retry.outcome, retry.replayed, retry.version) == ("kept", True, first.version)
    other = decide(state, item.key(), item.id, T0, now_us=3, copy_id="n1.2.100.1.log:0")
    assert (other.outcome, other.replayed) == ("duplicate", False)
    assert decide(state, item.key(), item.id, T0, now_us=4, copy_id="n1.2.100.1.log:0") == \
        dataclasses.replace(other, replayed=True)
    # a caller without copy ids keeps the old identity: any copy with this receive time is this one
    assert decide(state, item.key(), item.id, T0, now_us=5).replayed
    assert SessionState.from_bytes(state.to_bytes()) == state


def test_format_1_states_load_and_their_decisions_still_replay():
    """State written before copy ids: its decisions are keyed without one, and a retried spool file
    (which now passes its copy id) gets them back instead of duplicates of its own records."""
    item = sub("idle-daily", "d1", T0)
    old = (b'{"format":1,"v":7,"c":[["%s","%s","idle-daily",%d,0]],'
           b'"d":[["%s","%s",%d,"kept",7,[],[]]]}') % (SID.encode(), item.hash.encode(), T0, SID.encode(),
                                                        item.hash.encode(), T0)
    state = SessionState.from_bytes(old)
    again = decide(state, item.key(), item.id, T0, now_us=8, copy_id="n1.1.100.1.log:0")
    assert (again.outcome, again.replayed, again.version) == ("kept", True, 7)
    later = decide(state, item.key(), item.id, T0 + 1, now_us=9, copy_id="n1.2.100.1.log:0")
    assert later.outcome == "duplicate"
    assert SessionState.from_bytes(state.to_bytes()) == state


def test_dedup_key_default_uses_id_reason_and_body_hash():
    record = Record(id=SID.upper(), path="", raw=b"", received_at_ms=1, dims={"reason": "idle-daily"},
                    stored_json=b'{"a":1}')
    key = rules.telemetry_dedup_key(record)
    assert key == DedupKey(SID, "idle-daily", body_hash(b'{"a":1}'))
    record.body_hash = "cd" * 16
    assert rules.telemetry_dedup_key(record).body_hash == "cd" * 16
    with pytest.raises(DedupKeyError, match="no body_hash"):
        rules.telemetry_dedup_key(Record(id=SID, path="", raw=b"", received_at_ms=1))


def test_dedup_body_hash_is_blake2b_128():
    import hashlib

    assert body_hash(b"{}") == hashlib.blake2b(b"{}", digest_size=16).hexdigest()
    assert len(body_hash(b"")) == 32
