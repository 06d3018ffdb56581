"""Built-in plugin: the embedded dedup backend, one SQLite file per node.

``dedup.backend: sqlite`` (the default).  The database is
``<data_dir>/state/dedup.sqlite`` unless ``dedup.sqlite_path`` says
otherwise.  It is safe for several processes of one node (the processor's
workers): the file is in WAL mode and every decision is one ``BEGIN
IMMEDIATE`` transaction (read the session, apply
:func:`telemetry_core.dedup.rules.decide`, write it back), so decisions on
one session are serialized and none is lost.  :meth:`SqliteDedupBackend.decide_many`
decides a chunk of a spool file in one such transaction (the processor's
way: one write lock per chunk, not per record, is what lets several
workers run side by side).  Do not put the file on a
network file system (SQLite's locking does not work there); several nodes
share the Redis backend instead.

A decision waits up to ``dedup.lock_timeout_s`` for the write lock; past
that, or on a disk error, :class:`~telemetry_core.dedup.rules.DedupUnavailableError`
is raised and nothing was recorded.  Commits are durable against a process
crash at once, and against a power loss after :meth:`SqliteDedupBackend.sync`
(which the processor calls before it commits a spool file's outputs).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from . import rules
from .rules import DedupUnavailableError, SessionState
from ..hookspecs import hookimpl
from ..metrics.stats import counter_stats
from ..records import Decision, DedupKey

log = logging.getLogger(__name__)

DEFAULT_FILE = Path("state") / "dedup.sqlite"
#: Most sessions deleted by one expiry transaction (keeps the write lock short).
EXPIRE_BATCH = 2000
#: Most sessions read by one ``SELECT ... IN (...)`` of :meth:`SqliteDedupBackend.decide_many`.
SELECT_BATCH = 500
#: Seconds between automatic expiry passes made by :meth:`SqliteDedupBackend.decide`.
EXPIRE_EVERY_S = 600.0
DAY_MS = 86_400_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session TEXT PRIMARY KEY,
    touched_ms INTEGER NOT NULL,
    state BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_touched ON sessions (touched_ms);
"""


class SqliteDedupBackend:
    """Dedup decisions in one SQLite file shared by the processes of a node.

    ``clock`` returns seconds since the epoch (tests pass a fake one); it
    stamps each session's last decision, which expiry compares with
    ``expire_days``.
    """

    name = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, expire_days: float = 30.0, lock_timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.expire_days = expire_days
        self.lock_timeout_s = lock_timeout_s
        self.clock = clock
        self.stats = counter_stats("/dedup/sqlite", "decisions", "replays", "expired", "unavailable")
        self._lock = threading.Lock()
        self._next_expiry = 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), timeout=lock_timeout_s, isolation_level=None,
                                       check_same_thread=False)
            self._use_wal()
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._transaction():
                for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    self._db.execute(statement)
        except sqlite3.Error as exc:
            raise DedupUnavailableError(f"cannot open the SQLite dedup database {self.path}: {exc}") from exc

    def _use_wal(self) -> None:
        """Switch to WAL mode.  Workers starting together on a new file race for
        the switch, and SQLite's busy timeout does not cover it: retry until
        ``lock_timeout_s``."""
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    # ------------------------------------------------------------------ decisions

    def decide(self, key: DedupKey, record_id: str, received_at_ms: int, *, copy_id: str = "") -> Decision:
        """Decide on one submission in one transaction (see :func:`telemetry_core.dedup.rules.decide`,
        which also says what ``copy_id`` is)."""
        session, _, _ = rules.check_key(key, record_id, received_at_ms)
        if key.kind not in rules.DEDUPLICATED_KINDS:
            return rules.decide(SessionState(), key, record_id, received_at_ms, now_us=0)
        with self._lock:
            self._maybe_expire()
            try:
                with self._transaction():
                    row = self._db.execute("SELECT state FROM sessions WHERE session = ?", (session,)).fetchone()
                    state = SessionState.from_bytes(row[0]) if row else SessionState()
                    now = self.clock()
                    decision = rules.decide(state, key, record_id, received_at_ms, now_us=int(now * 1e6),
                                            copy_id=copy_id)
                    if not decision.replayed:
                        self._db.execute(
                            "INSERT INTO sessions (session, touched_ms, state) VALUES (?, ?, ?) "
                            "ON CONFLICT (session) DO UPDATE SET touched_ms = excluded.touched_ms, "
                            "state = excluded.state",
                            (session, int(now * 1000), state.to_bytes()))
            except sqlite3.Error as exc:
                self.stats.unavailable += 1
                raise DedupUnavailableError(f"SQLite dedup database {self.path} could not decide ({exc}); "
                                            f"nothing was recorded, retry later") from exc
        self.stats.decisions += 1
        if decision.replayed:
            self.stats.replays += 1
        return decision

    def decide_many(self, items: Sequence[tuple[DedupKey, str, int, str]]) -> list[Decision | rules.DedupKeyError]:
        """Decide on several submissions ``(key, record id, received_at_ms, copy id)`` in one
        transaction: the same decisions, in the same order, as :meth:`decide` on each in turn.
        A malformed item's :class:`~telemetry_core.dedup.rules.DedupKeyError` takes its place in
        the list; :class:`~telemetry_core.dedup.rules.DedupUnavailableError` means nothing was recorded."""
        results: list[Any] = [None] * len(items)
        pending = []
        for index, (key, record_id, received_at_ms, copy_id) in enumerate(items):
            try:
                session, _, _ = rules.check_key(key, record_id, received_at_ms)
                if key.kind not in rules.DEDUPLICATED_KINDS:
                    results[index] = rules.decide(SessionState(), key, record_id, received_at_ms, now_us=0)
                    continue
            except rules.DedupKeyError as exc:
                results[index] = exc
                continue
            pending.append((index, session, key, record_id, received_at_ms, copy_id))
        if not pending:
            return results
        replays = 0
        with self._lock:
            self._maybe_expire()
            try:
                with self._transaction():
                    states = self._states({session for _, session, *_ in pending})
                    now = self.clock()
                    changed = set()
                    for index, session, key, record_id, received_at_ms, copy_id in pending:
                        try:
                            decision = rules.decide(states[session], key, record_id, received_at_ms,
                                                    now_us=int(now * 1e6), copy_id=copy_id)
                        except rules.DedupKeyError as exc:
                            results[index] = exc
                            continue
                        results[index] = decision
                        if decision.replayed:
                            replays += 1
                        else:
                            changed.add(session)
                    self._db.executemany(
                        "INSERT INTO sessions (session, touched_ms, state) VALUES (?, ?, ?) "
                        "ON CONFLICT (session) DO UPDATE SET touched_ms = excluded.touched_ms, "
                        "state = excluded.state",
                        [(session, int(now * 1000), states[session].to_bytes()) for session in sorted(changed)])
            except sqlite3.Error as exc:
                self.stats.unavailable += 1
                raise DedupUnavailableError(f"SQLite dedup database {self.path} could not decide ({exc}); "
                                            f"nothing was recorded, retry later") from exc
        self.stats.decisions += sum(1 for index, *_ in pending if not isinstance(results[index], Exception))
        self.stats.replays += replays
        return results

    def _states(self, sessions: set[str]) -> dict[str, SessionState]:
        """The stored state of each of ``sessions`` (empty for a new one), inside a transaction."""
        states = {session: SessionState() for session in sessions}
        ordered = sorted(sessions)
        for start in range(0, len(ordered), SELECT_BATCH):
            part = ordered[start:start + SELECT_BATCH]
            marks = ",".join("?" * len(part))
            for session, state in self._db.execute(
                    f"SELECT session, state FROM sessions WHERE session IN ({marks})", part):
                states[session] = SessionState.from_bytes(state)
        return states

    def session_state(self, session: str) -> SessionState | None:
        """The stored state of ``session`` (for tests and inspection), or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT state FROM sessions WHERE session = ?", (session,)).fetchone()
        return SessionState.from_bytes(row[0]) if row else None

    def sessions(self) -> int:
        """How many sessions have state."""
        with self._lock:
            return self._db.execute("SELECT count(*) FROM sessions").fetchone()[0]

    # ------------------------------------------------------------------ expiry, durability

    def expire(self) -> int:
        """Delete the state of sessions whose last decision is more than
        ``expire_days`` old; return how many.  Also run every
        :data:`EXPIRE_EVERY_S` seconds by :meth:`decide`."""
        cutoff = int(self.clock() * 1000 - self.expire_days * DAY_MS)
        removed = 0
        try:
            while True:
                with self._transaction():
                    count = self._db.execute(
                        "DELETE FROM sessions WHERE session IN "
                        "(SELECT session FROM sessions WHERE touched_ms < ? LIMIT ?)",
                        (cutoff, EXPIRE_BATCH)).rowcount
                removed += count
                if count < EXPIRE_BATCH:
                    break
        except sqlite3.Error as exc:
            raise DedupUnavailableError(f"SQLite dedup database {self.path}: expiry failed ({exc})") from exc
        if removed:
            self.stats.expired += removed
            log.info("dedup: expired the state of %d sessions idle for more than %g days", removed,
                     self.expire_days)
        return removed

    def _maybe_expire(self) -> None:
        now = self.clock()
        if now >= self._next_expiry:
            self._next_expiry = now + min(EXPIRE_EVERY_S, self.expire_days * 86400 / 10)
            try:
                self.expire()
            except DedupUnavailableError as exc:  # the decision itself reports a lasting problem
                log.warning("dedup: %s; trying again in %.0fs", exc, self._next_expiry - now)

    def sync(self) -> None:
        """Force every committed decision to disk (fsync of the write-ahead log)."""
        with self._lock:
            for name in (f"{self.path}-wal", str(self.path)):
                try:
                    fd = os.open(name, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ helpers

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if kind is None:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:
            self.db.execute("ROLLBACK")


@hookimpl
def telemetry_config_choices(key: str) -> list[str] | None:
    return ["sqlite"] if key == "dedup.backend" else None


@hookimpl(trylast=True)
def telemetry_dedup_backend(engine: Any) -> SqliteDedupBackend | None:
    """The SQLite backend when ``dedup.backend`` is ``sqlite``."""
    config = engine.config
    if config.get("dedup.backend") != "sqlite":
        return None
    path = config.get("dedup.sqlite_path") or config.data_dir / DEFAULT_FILE
    return SqliteDedupBackend(path, expire_days=config.get("dedup.expire_days"),
                              lock_timeout_s=config.get("dedup.lock_timeout_s"))
