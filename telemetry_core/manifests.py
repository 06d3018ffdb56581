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
file of its own, under another manifest).  :func:`reconcile` reads every manifest in the archive and proves that
each spooled record landed exactly once, that each published file exists
with its checksum, and (given the ids clients got a 2xx for) that each
acknowledged submission is there once; it lists whatever does not hold.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

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

    @property
    def ok(self) -> bool:
        return not (self.problems or self.missing_ids or self.duplicated_ids)


#: A published file is written just before its manifest, so it may reach its
#: retention age (and be deleted) a little before the manifest does.
EXPIRY_MARGIN_S = 3600.0


def reconcile(publisher: Any, acknowledged_ids: Iterable[str] | None = None,
              unprocessed: Iterable[str] = (), *, expire_after_days: float | None = None,
              now: float | None = None) -> Reconciliation:
    """Check the archive's manifests against the archive (and the acknowledged ids).

    ``expire_after_days`` is how long the archive keeps data files (the
    local retention sweep's ``published_days``, or the S3 lifecycle's
    ``expire_after_days``): a file missing from a manifest at least that old
    (less :data:`EXPIRY_MARGIN_S`) expired, and is counted in
    ``expired_files`` instead of being a problem.  Manifests are never
    expired, so their records still count as landed.
    """
    now = time.time() if now is None else now
    expiry_cutoff = None if expire_after_days is None else now - expire_after_days * 86400.0 + EXPIRY_MARGIN_S
    result = Reconciliation()
    sources: Counter[str] = Counter()
    landed: Counter[str] = Counter()
    listing = list(publisher.list(""))
    stored = {obj.key: obj.size for obj in listing}
    modified = {obj.key: obj.modified for obj in listing}
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
            counts[file_key] += 1
            offsets[offset] += 1
            landed[record_id] += 1
        result.records += len(manifest.records)
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
    if acknowledged_ids is not None:
        for record_id in sorted(set(acknowledged_ids)):
            count = landed.get(record_id, 0)
            if count == 0:
                result.missing_ids.append(record_id)
            elif count > 1:
                result.duplicated_ids.append(record_id)
    return result
