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

The processor decides a chunk of a spool file at a time with
:meth:`Deduplicator.decide_many`: the same decisions, ledger lines and hook
calls as :meth:`~Deduplicator.decide` on each record in turn, but one call
(one transaction) to a backend that has ``decide_many``; backends without
it are asked record by record.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any, Sequence

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
            decision = self._not_applicable(record) if key is None else self._backend_decide(key, record)
        except rules.DedupKeyError:
            self.stats.rejected += 1
            raise
        except rules.DedupUnavailableError:
            self.stats.unavailable += 1
            raise
        return self._record(record, decision)

    def decide_many(self, *, records: Sequence[Record]) -> list[Decision | Exception]:
        """Decide on ``records`` in order: for each, what :meth:`decide` returns, or the
        exception it raises on that record (:class:`DuplicateRecord`, a
        :class:`~telemetry_core.dedup.rules.DedupKeyError`, a plugin's error).

        A backend with ``decide_many(items)`` (items ``(key, record id,
        received_at_ms, copy id)``; all of them recorded or none) is called
        once; others are asked record by record.  Raises
        :class:`~telemetry_core.dedup.rules.DedupUnavailableError` (and
        ``OSError``) for the whole chunk: operational, keep the input."""
        results: list[Any] = [None] * len(records)
        keyed: list[tuple[int, Any]] = []
        for index, record in enumerate(records):
            try:
                key = self.engine.dedup_key(record=record)
                if key is None:
                    results[index] = self._not_applicable(record)
                else:
                    keyed.append((index, key))
            except (OSError, rules.DedupUnavailableError):
                raise
            except Exception as exc:  # noqa: BLE001 - this record's failure, as decide() would raise it
                results[index] = exc
        if keyed:
            for (index, _), result in zip(keyed, self._backend_decide_many(records, keyed)):
                results[index] = result
        for index, result in enumerate(results):
            if isinstance(result, rules.DedupKeyError):
                self.stats.rejected += 1
            if isinstance(result, Exception):
                continue
            try:
                results[index] = self._record(records[index], result)
            except (OSError, rules.DedupUnavailableError):
                raise
            except Exception as exc:  # noqa: BLE001 - DuplicateRecord, or a telemetry_dedup_decided plugin failed
                results[index] = exc
        return results

    def _backend_decide_many(self, records: Sequence[Record], keyed: list[tuple[int, Any]]) -> list[Any]:
        """Decisions (or a record's exception) for ``keyed`` ``(index, key)``, in order."""
        batch = getattr(self.backend, "decide_many", None)
        if batch is not None and self.passes_copy_id:
            items = [(key, records[index].id, records[index].received_at_ms, records[index].source or "")
                     for index, key in keyed]
            try:
                return list(batch(items))
            except rules.DedupUnavailableError:
                self.stats.unavailable += 1
                raise
            except OSError:
                raise
            except Exception:  # noqa: BLE001 - nothing recorded: ask record by record, isolating the culprit
                log.warning("dedup backend %s failed on a batch; deciding its records one by one",
                            type(self.backend).__name__, exc_info=True)
        results: list[Any] = []
        for index, key in keyed:
            try:
                results.append(self._backend_decide(key, records[index]))
            except rules.DedupUnavailableError:
                self.stats.unavailable += 1
                raise
            except OSError:
                raise
            except Exception as exc:  # noqa: BLE001 - this record's failure
                results.append(exc)
        return results

    def _not_applicable(self, record: Record) -> Decision:
        """The decision for a record no ``telemetry_dedup_key`` plugin keys."""
        return Decision(rules.NOT_APPLICABLE, rules.normalize_record_id(record.id),
                        body_hash=rules.normalize_body_hash(record.body_hash), received_at_ms=record.received_at_ms)

    def _backend_decide(self, key: Any, record: Record) -> Decision:
        if self.passes_copy_id and record.source:
            return self.backend.decide(key, record.id, record.received_at_ms, copy_id=record.source)
        return self.backend.decide(key, record.id, record.received_at_ms)

    def _record(self, record: Record, decision: Decision) -> Decision:
        """Ledger line, ``telemetry_dedup_decided``, metrics; :class:`DuplicateRecord` for a duplicate."""
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
