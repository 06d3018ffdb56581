"""The de-duplication rules: pure functions over one session's state.

Every backend (SQLite, Redis, the in-memory one of the tests and the
benchmark) loads a :class:`SessionState`, calls :func:`decide` and stores
the state back atomically, so the semantics live here, once.  They are
written down in docs/dedup.md; in short:

* a stored record is identified by ``(record id, body hash)``, its
  *content*; a *submission* (one copy of a content) additionally by its
  receive time ``received_at_ms`` and its *copy id*, which tells apart
  copies received in the same millisecond (the processor passes the
  copy's spool location, ``<spool file>:<offset>``, which a retry keeps);
* within a session, contents are ranked by ``(is saved-session, first
  receive time, body hash, record id)``; the highest is **live**, every
  other content is **superseded**.  So the latest idle-daily is live until
  a saved-session arrives, which supersedes every idle-daily; an older
  idle-daily arriving late is superseded on arrival;
* a submission whose content is already known is a **duplicate** (an exact
  resubmission); it can lower the content's first receive time;
* deciding the same submission again returns the first decision unchanged
  (``replayed``), so a processor that retries a spool file gets the same
  answers; another copy, even one received in the same millisecond, is a
  duplicate, so the main store holds each content once;
* the *final* state of every content depends only on the set of
  submissions seen, never on the order they were decided in; each decision
  lists the state changes it caused (``Decision.changes``) with a
  per-session ``version``, so a reader that keeps the highest version per
  content ends in that same final state.

This module is also the built-in plugin that says what a record is
de-duplicated on (:func:`telemetry_dedup_key`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from ..errors import RecordError, TelemetryError
from ..hookspecs import hookimpl
from ..records import Decision, DedupKey, Record

IDLE_DAILY = "idle-daily"
SAVED_SESSION = "saved-session"
#: The kinds (``reason`` dimension values) that are de-duplicated; any other is ``not_applicable``.
DEDUPLICATED_KINDS = (IDLE_DAILY, SAVED_SESSION)

KEPT = "kept"
SUPERSEDED_EARLIER = "superseded_earlier"
DUPLICATE = "duplicate"
STALE = "stale"
NOT_APPLICABLE = "not_applicable"

#: States of a stored record (a content) in ``Decision.changes`` and in the ledger.
SUPERSEDED = "superseded"
LIVE = "live"

#: The format of :meth:`SessionState.to_bytes`; :meth:`SessionState.from_bytes` also reads format 1
#: (written before copy ids existed: its decisions are keyed without one).
STATE_FORMAT = 2
STATE_FORMATS = (1, 2)

#: Size of the digest of :func:`body_hash`, in bytes (32 hex digits).
BODY_HASH_BYTES = 16

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SESSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_HASH = re.compile(r"(?:[0-9a-f]{2}){8,64}")
_MAX_MS = 1 << 53


class DedupKeyError(RecordError):
    """A record cannot be de-duplicated because its id, session or body hash
    is malformed; the processor sends it to ``invalid/invalid_dedup_key/``."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid_dedup_key", detail)


class DedupUnavailableError(TelemetryError):
    """The dedup backend cannot decide right now (Redis unreachable after the
    configured retries, the SQLite database locked past ``dedup.lock_timeout_s``,
    a disk error).  Operational, not the record's fault: the processor keeps
    its input and retries it later; no decision was recorded."""


class DedupStateError(TelemetryError):
    """The stored state of a session cannot be read (corrupted, or written by
    an incompatible version)."""


def body_hash(data: bytes) -> str:
    """The body hash of a stored record: blake2b-128 of the stored JSON bytes
    (what follows ``<id>\\t`` on the v2 line), as 32 lower-case hex digits.
    The processor computes it when it stores a record; readers recompute it
    from the line to look the record up in the ledger."""
    return hashlib.blake2b(data, digest_size=BODY_HASH_BYTES).hexdigest()


def normalize_record_id(record_id: Any) -> str:
    """Return the record id in lower case, or raise :class:`DedupKeyError`
    when it is not a UUID (8-4-4-4-12 hexadecimal digits)."""
    if not isinstance(record_id, str) or not _UUID.fullmatch(record_id):
        raise DedupKeyError(f"record id {_show(record_id)} is not a UUID (8-4-4-4-12 hexadecimal digits)")
    return record_id.lower()


def normalize_body_hash(digest: Any) -> str:
    """Return ``digest`` or raise :class:`DedupKeyError` when it is not 16 to
    128 lower-case hexadecimal digits (an even number)."""
    if not isinstance(digest, str) or not _HASH.fullmatch(digest):
        raise DedupKeyError(f"body hash {_show(digest)} is not 16-128 lower-case hex digits; "
                            f"use telemetry_core.dedup.rules.body_hash()")
    return digest


def check_key(key: DedupKey, record_id: Any, received_at_ms: Any) -> tuple[str, str, str]:
    """Validate a decision's inputs; return ``(session, record id, body hash)``
    normalized, or raise :class:`DedupKeyError` saying what is wrong."""
    if not isinstance(key, DedupKey):
        raise DedupKeyError(f"expected a DedupKey, got {type(key).__name__}")
    record_id = normalize_record_id(record_id)
    digest = normalize_body_hash(key.body_hash)
    session = key.session.lower() if isinstance(key.session, str) and _UUID.fullmatch(key.session) else key.session
    if not isinstance(session, str) or not _SESSION.fullmatch(session):
        raise DedupKeyError(f"session {_show(key.session)} is not 1-128 characters of [A-Za-z0-9._:-]")
    if not isinstance(key.kind, str):
        raise DedupKeyError(f"kind {_show(key.kind)} is not a string")
    if (not isinstance(received_at_ms, int) or isinstance(received_at_ms, bool)
            or not 0 <= received_at_ms < _MAX_MS):
        raise DedupKeyError(f"received_at_ms {_show(received_at_ms)} is not a non-negative integer")
    return session, record_id, digest


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class Content:
    """One stored record of a session: ``(record_id, body_hash)``, its kind,
    the earliest receive time of any of its copies, and whether it is
    superseded (as last told to the ledger)."""

    record_id: str
    body_hash: str
    kind: str
    first_ms: int
    superseded: bool = False

    @property
    def rank(self) -> tuple[bool, int, str, str]:
        """Higher is newer: saved-session above idle-daily, then first receive
        time, then body hash and record id (a total order, so ties are decided
        the same way everywhere)."""
        return (self.kind == SAVED_SESSION, self.first_ms, self.body_hash, self.record_id)


@dataclass
class SessionState:
    """What a backend stores for one session.

    ``version`` is the version of the last decision (strictly increasing);
    ``contents`` the session's stored records by ``"<record id>:<body
    hash>"``; ``decisions`` every decision made, by
    :func:`submission_key` (replays return them).
    """

    version: int = 0
    contents: dict[str, Content] = field(default_factory=dict)
    decisions: dict[str, Decision] = field(default_factory=dict)

    def live(self) -> Content | None:
        """The live content (the highest ranked), or ``None`` for an empty session."""
        return max(self.contents.values(), key=lambda c: c.rank, default=None)

    def to_bytes(self) -> bytes:
        """Compact JSON, for the SQLite row and the Redis hash."""
        return orjson.dumps({
            "format": STATE_FORMAT,
            "v": self.version,
            "c": [[c.record_id, c.body_hash, c.kind, c.first_ms, int(c.superseded)]
                  for c in self.contents.values()],
            "d": [[d.record_id, d.body_hash, d.received_at_ms, d.outcome, d.version, list(d.supersedes),
                   [list(change) for change in d.changes], _copy_id_of(submission)]
                  for submission, d in self.decisions.items()],
        })

    @classmethod
    def from_bytes(cls, data: bytes | str) -> "SessionState":
        try:
            document = orjson.loads(data)
            if document.get("format") not in STATE_FORMATS:
                raise DedupStateError(f"session state has format {document.get('format')!r}; this version "
                                      f"reads {' and '.join(map(str, STATE_FORMATS))}")
            state = cls(version=int(document["v"]))
            for record_id, digest, kind, first_ms, superseded in document["c"]:
                state.contents[f"{record_id}:{digest}"] = Content(record_id, digest, kind, first_ms, bool(superseded))
            for record_id, digest, received, outcome, version, supersedes, changes, *copy in document["d"]:
                copy_id = copy[0] if copy and document["format"] >= 2 else ""
                state.decisions[submission_key(record_id, digest, received, copy_id)] = Decision(
                    outcome, record_id, tuple(supersedes), body_hash=digest, received_at_ms=received,
                    version=version, changes=tuple(tuple(change) for change in changes))
        except DedupStateError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DedupStateError(f"stored dedup state is unreadable ({exc}); the session's state "
                                  f"must be deleted from the backend") from exc
        return state

    def live_count(self) -> int:
        """Contents not marked superseded: 0 or 1 after every decision (tests check it)."""
        return sum(1 for c in self.contents.values() if not c.superseded)

    def earlier_decision(self, record_id: str, digest: str, received_at_ms: int, copy_id: str) -> Decision | None:
        """The decision already made on this submission, or ``None``.

        A submission with a copy id matches its own decision, or one made
        without a copy id (by a caller or a state that had none); one
        without a copy id matches any copy with the same receive time (the
        identity before copy ids existed)."""
        triple = submission_key(record_id, digest, received_at_ms, "")
        found = self.decisions.get(submission_key(record_id, digest, received_at_ms, copy_id))
        if found is None and copy_id:
            found = self.decisions.get(triple)
        if found is None and not copy_id:
            prefix = triple + ":"
            found = next((d for key, d in self.decisions.items() if key.startswith(prefix)), None)
        return found


def submission_key(record_id: str, digest: str, received_at_ms: int, copy_id: str) -> str:
    """The key of one submission's decision in :attr:`SessionState.decisions`:
    ``"<record id>:<body hash>:<received_at_ms>"``, plus ``":<copy id>"`` when there is one."""
    key = f"{record_id}:{digest}:{received_at_ms}"
    return f"{key}:{copy_id}" if copy_id else key


def _copy_id_of(key: str) -> str:
    parts = key.split(":", 3)  # a record id, a hash and a time hold no ":"; a copy id may
    return parts[3] if len(parts) == 4 else ""


def decide(state: SessionState, key: DedupKey, record_id: str, received_at_ms: int, *,
           now_us: int, copy_id: str = "") -> Decision:
    """Decide on one submission and update ``state`` in place.

    :param state: the session's state as stored (empty for a new session).
    :param key: the record's :class:`~telemetry_core.records.DedupKey`.
    :param record_id: the submission id (a UUID).
    :param received_at_ms: when the edge received the submission.
    :param now_us: the caller's clock in microseconds; the decision's version
        is ``max(now_us, state.version + 1)``, so versions grow even across
        expiry of the session's state.
    :param copy_id: which copy this is, unique per copy and the same when
        the copy is decided again (the processor passes ``record.source``,
        ``<spool file>:<offset>``).  Two copies received in the same
        millisecond are then two submissions: the second is a
        ``duplicate``.  Empty: the submission is ``(record id, body hash,
        received_at_ms)`` alone, so such copies are one (the rule before
        copy ids existed).
    :return: the decision.  When ``decision.replayed`` is true, or the
        outcome is ``not_applicable``, ``state`` was not changed and need not
        be written back.

    Raises :class:`DedupKeyError` for malformed input.
    """
    session, record_id, digest = check_key(key, record_id, received_at_ms)
    del session  # validated; the caller already loaded the session's state by it
    if not isinstance(copy_id, str):
        raise DedupKeyError(f"copy id {_show(copy_id)} is not a string")
    if key.kind not in DEDUPLICATED_KINDS:
        return Decision(NOT_APPLICABLE, record_id, body_hash=digest, received_at_ms=received_at_ms)
    earlier = state.earlier_decision(record_id, digest, received_at_ms, copy_id)
    if earlier is not None:
        return replace(earlier, replayed=True)

    state.version = max(int(now_us), state.version + 1)
    before = state.live()
    content_id = f"{record_id}:{digest}"
    content = state.contents.get(content_id)
    fresh = content is None
    if content is None:
        content = state.contents[content_id] = Content(record_id, digest, key.kind, received_at_ms)
    else:
        content.first_ms = min(content.first_ms, received_at_ms)
        if key.kind == SAVED_SESSION:  # the same bytes sent once as a saved-session: it is one
            content.kind = SAVED_SESSION
    live = state.live()

    changes = []
    supersedes = []
    for other_id in sorted(state.contents):
        other = state.contents[other_id]
        superseded = other is not live
        if superseded != other.superseded:
            other.superseded = superseded
            changes.append((other.record_id, other.body_hash, SUPERSEDED if superseded else LIVE))
            if superseded and other is not content:
                supersedes.append(other.record_id)

    if not fresh:
        outcome = DUPLICATE
    elif content is live:
        outcome = SUPERSEDED_EARLIER if before is not None else KEPT
    else:
        outcome = STALE
    decision = Decision(outcome, record_id, tuple(supersedes), body_hash=digest, received_at_ms=received_at_ms,
                        version=state.version, changes=tuple(changes))
    state.decisions[submission_key(record_id, digest, received_at_ms, copy_id)] = decision
    return decision


@hookimpl(trylast=True)
def telemetry_dedup_key(record: Record) -> DedupKey | None:
    """Built-in key: the session is the submission id, the kind its ``reason``
    dimension, the body hash ``record.body_hash`` (computed from
    ``record.stored_json`` when the processor did not set it)."""
    digest = record.body_hash
    if not digest and record.stored_json is not None:
        digest = body_hash(record.stored_json)
    if not digest:
        raise DedupKeyError("the record has no body_hash and no stored_json; the processor must "
                            "serialize the record before the dedup stage")
    return DedupKey(session=record.id.lower() if isinstance(record.id, str) else record.id,
                    kind=record.dims.get("reason") or "", body_hash=digest)
