"""Manifests of processed spool files, and reconciliation.

Every processed spool file publishes ``_manifests/<node>/<seq>.json``::

    {"version": 1, "node": "n1", "seq": 42, "source": "<spool file name>",
     "records_read": 1000, "skipped": {"torn_tail": {"spans": 1, "bytes": 17}},
     "files": [{"key": "saved-session/.../....n1.42.log.xz", "records": 998,
                "size": 123456, "checksum": "sha256:..."}, ...],
     "records": [[<offset in the spool file>, "<submission id>", "<key>"], ...],
     "parked": [[<offset>, "<submission id>", "pending/<revision key>/<spool file>"], ...]}

so every record read from the spool names the one published file it landed
in, or the local ``pending/`` file it is parked in while the Histograms.json
revision it needs cannot be fetched (it is published later, from a spool
file of its own, under another manifest).  :func:`reconcile` reads every
manifest in the archive and proves that each spooled record landed exactly
once, that each published file exists with its checksum, and (given the ids
clients got a 2xx for) that each acknowledged submission is there once; it
lists whatever does not hold.

It also accounts for every record that is not simply published: records
quarantined in ``_invalid/<category>/`` (less those replayed: an original
named in a published ``_replays/`` journal is out of quarantine, its copy
landed under another manifest), records parked in ``pending/``, and, given
the node's :class:`~telemetry_core.store.process.holdings.LocalHoldings`, the spool files
in ``failed/``, whose acknowledged records are not published (a problem).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from .replay import INVALID_PREFIX, REPLAY_PREFIX, journal_originals

if TYPE_CHECKING:
    from .holdings import LocalHoldings

MANIFEST_PREFIX = "_manifests/"


def manifest_key(node_id: str, seq: int) -> str:
    return f"{MANIFEST_PREFIX}{node_id}/{seq}.json"


@dataclass
class Manifest:
    node: str
    seq: int
    source: str
    records_read: int = 0
    skipped: dict[str, Any] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    records: list[list[Any]] = field(default_factory=list)
    file_records: dict[str, int] = field(default_factory=dict)
    parked: list[list[Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "node": self.node, "seq": self.seq, "source": self.source,
                "records_read": self.records_read, "skipped": self.skipped, "files": self.files,
                "records": self.records, "file_records": self.file_records,
                "parked": self.parked}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> "Manifest":
        if document.get("version") != 1:
            raise ValueError(f"unsupported manifest version {document.get('version')!r}")
        return cls(node=document["node"], seq=document["seq"], source=document["source"],
                   records_read=document.get("records_read", 0), skipped=document.get("skipped", {}),
                   files=document.get("files", []), records=document.get("records", []),
                   file_records=document.get("file_records", {}), parked=document.get("parked", []))


@dataclass
class Reconciliation:
    """What :func:`reconcile` found; ``ok`` when nothing is wrong."""

    manifests: int = 0
    records: int = 0
    files: int = 0
    #: Published files gone because their retention ended (not problems).
    expired_files: int = 0
    problems: list[str] = field(default_factory=list)
    missing_ids: list[str] = field(default_factory=list)
    duplicated_ids: list[str] = field(default_factory=list)
    #: Records still in quarantine, by category (replayed originals left out).
    quarantined: Counter[str] = field(default_factory=Counter)
    #: Quarantined originals whose replayed copy landed (named in a published ``_replays/`` journal).
    replayed: int = 0
    #: Records of replay spool files the processor has not published yet (still quarantined).
    replay_waiting: int = 0
    #: Manifest-parked records still waiting in ``pending/``, and those that landed later.
    parked: int = 0
    parked_landed: int = 0
    #: What ``pending/`` holds now.
    pending_files: int = 0
    pending_records: int = 0
    #: Spool files in ``failed/`` and the acknowledged records in them (none of them published).
    failed_files: int = 0
    failed_records: int = 0

    @property
    def ok(self) -> bool:
        return not (self.problems or self.missing_ids or self.duplicated_ids)


#: A published file is written just before its manifest, so it may reach its
#: retention age (and be deleted) a little before the manifest does.
EXPIRY_MARGIN_S = 3600.0


def reconcile(publisher: Any, acknowledged_ids: Iterable[str] | None = None,
              unprocessed: Iterable[str] = (), *, expire_after_days: float | None = None,
              now: float | None = None, held: "LocalHoldings | None" = None) -> Reconciliation:
    """Check the archive's manifests against the archive (and the acknowledged ids).

    ``expire_after_days`` is how long the archive keeps data files (the
    local retention sweep's ``published_days``, or the S3 lifecycle's
    ``expire_after_days``): a file missing from a manifest at least that old
    (less :data:`EXPIRY_MARGIN_S`) expired, and is counted in
    ``expired_files`` instead of being a problem.  Manifests are never
    expired, so their records still count as landed.

    ``held`` is what the node holds locally (``failed/``, ``pending/``,
    unpublished replay journals): every file in ``failed/`` is a problem,
    and a manifest-parked record must still be in ``pending/`` or have
    landed in a manifest's records since.  Without it parked records are
    counted, not checked.  An acknowledged id is accounted for when it
    landed (published or quarantined) or is parked; a quarantined original
    whose replay landed does not count as a second landing.
    """
    now = time.time() if now is None else now
    expiry_cutoff = None if expire_after_days is None else now - expire_after_days * 86400.0 + EXPIRY_MARGIN_S
    result = Reconciliation()
    sources: Counter[str] = Counter()
    landed: Counter[str] = Counter()
    listing = list(publisher.list(""))
    stored = {obj.key: obj.size for obj in listing}
    modified = {obj.key: obj.modified for obj in listing}
    replayed: set[tuple[str, int]] = set()
    for key in sorted(k for k in stored if k.startswith(REPLAY_PREFIX) and k.endswith(".json")):
        try:
            with publisher.open(key) as handle:
                entries = journal_originals(json.load(handle))
        except (ValueError, TypeError, KeyError, OSError) as exc:
            result.problems.append(f"{key}: unreadable replay journal: {exc}")
            continue
        replayed.update((original, line) for original, line, _ in entries)
    parked: list[tuple[str, int, str, str]] = []
    for key in sorted(k for k in stored if k.startswith(MANIFEST_PREFIX)):
        try:
            with publisher.open(key) as handle:
                manifest = Manifest.from_json(json.load(handle))
        except (ValueError, KeyError, OSError) as exc:
            result.problems.append(f"{key}: unreadable manifest: {exc}")
            continue
        result.manifests += 1
        sources[manifest.source] += 1
        counts: Counter[str] = Counter()
        offsets: Counter[int] = Counter()
        for offset, record_id, file_key in manifest.records:
            line = counts[file_key]  # records are stored in spool order: the n-th naming a file is its line n
            counts[file_key] += 1
            offsets[offset] += 1
            if (file_key, line) in replayed:
                result.replayed += 1  # out of quarantine: its copy landed under another manifest
                continue
            landed[record_id] += 1
            if file_key.startswith(INVALID_PREFIX):
                result.quarantined[file_key.split("/")[1]] += 1
        result.records += len(manifest.records)
        parked += [(key, offset, record_id, where) for offset, record_id, where in manifest.parked]
        for offset, count in offsets.items():
            if count > 1:
                result.problems.append(f"{key}: record at offset {offset} of {manifest.source} landed {count} times")
        manifest_time = modified.get(key)
        expired = expiry_cutoff is not None and manifest_time is not None and manifest_time <= expiry_cutoff
        for entry in manifest.files:
            result.files += 1
            if entry["key"] not in stored and expired:
                result.expired_files += 1
            elif entry["key"] not in stored:
                result.problems.append(f"{key}: published file {entry['key']} is missing")
            elif stored[entry["key"]] != entry["size"]:
                result.problems.append(f"{key}: {entry['key']} has {stored[entry['key']]} bytes, "
                                       f"manifest says {entry['size']}")
            if counts.get(entry["key"], 0) != entry["records"]:
                result.problems.append(f"{key}: {entry['key']} should hold {entry['records']} records, "
                                       f"the record list names it {counts.get(entry['key'], 0)} times")
        if sum(e["records"] for e in manifest.files) != len(manifest.records):
            result.problems.append(f"{key}: files hold {sum(e['records'] for e in manifest.files)} records, "
                                   f"{len(manifest.records)} were read")
    for source, count in sources.items():
        if count > 1:
            result.problems.append(f"spool file {source} was published {count} times")
    for name in unprocessed:
        result.problems.append(f"spool file {name} is not processed yet")
    still_parked = _check_parked(result, parked, landed, held)
    if held is not None:
        _check_held(result, held)
    if acknowledged_ids is not None:
        for record_id in sorted(set(acknowledged_ids)):
            count = landed.get(record_id, 0)
            if count == 0 and record_id not in still_parked:
                result.missing_ids.append(record_id)
            elif count > 1:
                result.duplicated_ids.append(record_id)
    return result


def _check_parked(result: Reconciliation, parked: list[tuple[str, int, str, str]], landed: Counter[str],
                  held: "LocalHoldings | None") -> set[str]:
    """Count manifest-parked records; one neither in ``pending/`` nor landed since is a problem.
    Returns the ids still parked."""
    pending_ids = held.pending_ids if held is not None else set()
    pending_paths = held.pending_paths if held is not None else set()
    still: set[str] = set(pending_ids)
    for key, offset, record_id, where in parked:
        if landed.get(record_id, 0):
            result.parked_landed += 1
        elif held is None or record_id in pending_ids or (record_id == "-" and where in pending_paths):
            result.parked += 1
            still.add(record_id)
        else:
            result.problems.append(f"{key}: parked record {record_id} (offset {offset}) is neither in pending/ "
                                   f"(parked in {where}) nor in a later manifest")
    return still


def _check_held(result: Reconciliation, held: "LocalHoldings") -> None:
    result.pending_files = len(held.pending)
    result.pending_records = sum(len(f.record_ids) for f in held.pending)
    result.replay_waiting = held.replay_waiting
    for failed in held.failed:
        result.failed_files += 1
        result.failed_records += len(failed.record_ids)
        if failed.error:
            result.problems.append(f"{failed.path}: unreadable ({failed.error}); its acknowledged records "
                                   "are not published")
        else:
            result.problems.append(f"{failed.path}: {len(failed.record_ids)} acknowledged records not published "
                                   f"({failed.reason}); move it to spool/finished/ to try again")
    for pending in held.pending:
        if pending.error:
            result.problems.append(f"{pending.path}: unreadable parked spool file ({pending.error})")
