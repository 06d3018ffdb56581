"""The dedup stage as the processor uses it: one object, four calls.

::

    dedup = Deduplicator.from_engine(engine)     # once per processor process
    for record in records_of_a_spool_file:       # after convert, with record.stored_json/body_hash set
        decision = dedup.decide(record=record)   # raises DuplicateRecord for an exact resubmission
        ...store the record...
    dedup.sync()                                 # before the spool file's processing is committed
    ...
    dedup.close()                                # at exit: finishes the ledger file

:meth:`Deduplicator.decide` asks ``telemetry_dedup_key`` what the record is
de-duplicated on, has the backend (``telemetry_dedup_backend``) decide
(passing the record's spool location, ``record.source``, as the copy id,
so two copies received in the same millisecond are told apart),
appends the decision to this process's ledger file, calls
``telemetry_dedup_decided`` and counts the outcome under ``/dedup``.
See docs/dedup.md for the rules and for what the processor must do with
each outcome.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

from greplin import scales

from . import rules
from .ledger import LEDGER_DIR, LedgerWriter
from ..errors import RecordError
from ..interfaces import DedupBackend
from ..records import Decision, Record

log = logging.getLogger(__name__)


class DuplicateRecord(RecordError):
    """The record is an exact resubmission of one already stored (same id,
    same stored bytes).  The processor stores it under
    ``invalid/duplicate/`` (with its original bytes, like every record that
    leaves the main store), so the main store holds each content once; the
    decision is in the ledger.  ``decision`` is the backend's decision."""

    def __init__(self, decision: Decision) -> None:
        super().__init__("duplicate", f"exact resubmission of {decision.record_id} (body {decision.body_hash}), "
                                      f"which is already stored")
        self.decision = decision


def accepts_copy_id(backend: DedupBackend) -> bool:
    """Whether ``backend.decide`` takes the ``copy_id=`` keyword (backends
    written before it existed do not; they still work, without it)."""
    try:
        parameters = inspect.signature(backend.decide).parameters.values()
    except (TypeError, ValueError):  # no signature to read: do not risk a TypeError per record
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == "copy_id" and p.kind is not p.POSITIONAL_ONLY)
               for p in parameters)


class Deduplicator:
    """Key, backend decision, ledger line, ``telemetry_dedup_decided`` and metrics, per record.

    ``duplicates`` says what :meth:`decide` does with a ``duplicate``
    outcome: ``"raise"`` (default) raises :class:`DuplicateRecord` after
    recording it; ``"return"`` returns the decision like any other.
    """

    def __init__(self, engine: Any, backend: DedupBackend, ledger: LedgerWriter | None, *,
                 duplicates: str = "raise") -> None:
        if duplicates not in ("raise", "return"):
            raise ValueError("duplicates must be 'raise' or 'return'")
        self.engine = engine
        self.backend = backend
        self.ledger = ledger
        self.duplicates = duplicates
        self.passes_copy_id = accepts_copy_id(backend)
        if not self.passes_copy_id:
            log.warning("dedup backend %s does not accept copy_id=: copies of a record received in the same "
                        "millisecond are decided as one submission and all of them stay in the main store "
                        "(see docs/dedup.md, Limits)", type(backend).__name__)
        self.stats = scales.collection("/dedup", scales.IntStat("decisions"), scales.IntDictStat("outcomes"),
                                       scales.IntStat("replayed"), scales.IntStat("unavailable"),
                                       scales.IntStat("rejected"))

    @classmethod
    def from_engine(cls, engine: Any, **options: Any) -> "Deduplicator":
        """The configured backend plus a ledger writer in ``<data_dir>/ledger/``."""
        config = engine.config
        ledger = LedgerWriter(Path(config.data_dir) / LEDGER_DIR, engine.node_id,
                              max_bytes=config.get("dedup.ledger_max_bytes"),
                              max_age_s=config.get("dedup.ledger_max_age_s"))
        return cls(engine, engine.dedup_backend(), ledger, **options)

    def decide(self, *, record: Record) -> Decision:
        """Decide on one record (see the module docstring).

        Raises :class:`~telemetry_core.dedup.rules.DedupKeyError` (a record
        error) for a malformed id or hash,
        :class:`~telemetry_core.dedup.rules.DedupUnavailableError`
        (operational: keep the input, retry later) when the backend cannot
        decide, and :class:`DuplicateRecord` for an exact resubmission.
        """
        try:
            key = self.engine.dedup_key(record=record)
            if key is None:
                record_id = rules.normalize_record_id(record.id)
                decision = Decision(rules.NOT_APPLICABLE, record_id,
                                    body_hash=rules.normalize_body_hash(record.body_hash),
                                    received_at_ms=record.received_at_ms)
            elif self.passes_copy_id and record.source:
                decision = self.backend.decide(key, record.id, record.received_at_ms, copy_id=record.source)
            else:
                decision = self.backend.decide(key, record.id, record.received_at_ms)
        except rules.DedupKeyError:
            self.stats.rejected += 1
            raise
        except rules.DedupUnavailableError:
            self.stats.unavailable += 1
            raise
        if self.ledger is not None:
            self.ledger.write(decision)
        self.engine.dedup_decided(record=record, decision=decision)
        self.stats.decisions += 1
        self.stats.outcomes[decision.outcome] += 1
        if decision.replayed:
            self.stats.replayed += 1
        if decision.outcome == rules.DUPLICATE and self.duplicates == "raise":
            raise DuplicateRecord(decision)
        return decision

    def sync(self) -> None:
        """Make every decision so far durable: the backend's, then the ledger's lines."""
        sync = getattr(self.backend, "sync", None)
        if sync is not None:
            sync()
        if self.ledger is not None:
            self.ledger.sync()

    def rotate_ledger(self) -> Path | None:
        """Finish the current ledger file now (so the publisher can copy it)."""
        return self.ledger.rotate() if self.ledger is not None else None

    def expire(self) -> int:
        """Drop the backend state of sessions idle for more than ``dedup.expire_days``."""
        expire = getattr(self.backend, "expire", None)
        return expire() if expire is not None else 0

    def close(self) -> None:
        """Finish the ledger file and close the backend."""
        try:
            if self.ledger is not None:
                self.ledger.close()
        finally:
            self.backend.close()
