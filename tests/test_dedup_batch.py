"""Deciding a chunk at once (``decide_many``) gives what deciding record by record gives."""

from __future__ import annotations

from telemetry_core.dedup.rules import DedupKeyError
from telemetry_core.dedup.sqlite_backend import SqliteDedupBackend
from telemetry_core.records import DedupKey

T0 = 1378822911255
SESSION = "0f6d4b8e-3c3a-4f59-9ad5-6f9b2b3f1a10"


def _items():
    """Copies, resubmissions and supersessions on two sessions, plus a malformed key."""
    items = []
    for index in range(6):
        session = SESSION if index % 2 else SESSION.replace("0f6d", "1f6d")
        record_id = f"{index // 2:08x}-0000-4000-8000-000000000000"
        items.append((DedupKey(session=session, kind="idle-daily", body_hash=f"{index // 3:032x}"),
                      record_id, T0 + index // 2, f"spool:{index}"))
    items.append(items[1])  # the same copy again: replayed
    items.append((DedupKey(session=SESSION, kind="idle-daily", body_hash="1" * 32), "../../etc", T0, "spool:9"))
    items.append((DedupKey(session=SESSION, kind="saved-session", body_hash="2" * 32),
                  "00000009-0000-4000-8000-000000000000", T0 + 5, "spool:10"))
    return items


def test_decide_many_matches_decide_one_by_one(tmp_path):
    clock = iter(range(1_000_000, 2_000_000)).__next__
    one = SqliteDedupBackend(tmp_path / "one.sqlite", clock=lambda: 1_700_000_000.0)
    many = SqliteDedupBackend(tmp_path / "many.sqlite", clock=lambda: 1_700_000_000.0)
    del clock
    expected = []
    for key, record_id, received_at_ms, copy_id in _items():
        try:
            expected.append(one.decide(key, record_id, received_at_ms, copy_id=copy_id))
        except DedupKeyError as exc:
            expected.append(type(exc))
    got = many.decide_many(_items())
    assert [type(g) if isinstance(g, Exception) else g for g in got] == expected
    for session in (SESSION, SESSION.replace("0f6d", "1f6d")):
        assert many.session_state(session).to_bytes() == one.session_state(session).to_bytes()
    # deciding the same chunk again replays every decision
    again = many.decide_many(_items())
    assert all(g.replayed for g in again if not isinstance(g, Exception) and g.outcome != "not_applicable")
