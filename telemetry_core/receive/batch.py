"""Splitting the bodies of the batch endpoints into records.

* ``/submit/telemetry/batch``: ``<id>\\t<json>\\t<id>\\t<json>...``
* ``/submit/telemetry/batch_dims``:
  ``<id>\\t<reason>\\t<appName>\\t<appVersion>\\t<appUpdateChannel>\\t<appBuildID>\\t<json>...``

Fields are separated by a single tab; one trailing newline after the last
record is allowed.  A JSON document must not contain a raw tab (JSON text
escapes tabs inside strings as ``\\t``; write it compact).  Each record
becomes the path its single-submission form would have had
(``<id>`` or ``<id>/<dims...>``) and its JSON bytes; the edge then treats
each like a submission of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..records import Rejection

__all__ = ["BATCH_KINDS", "BatchRecord", "split_batch"]

#: Path (after /submit/telemetry/) -> number of tab-separated fields per record.
BATCH_KINDS = {"batch": 2, "batch_dims": 7}


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One record of a batch: its submission path, or why that path is unusable, and its body."""

    path: str | None
    body: bytes
    problem: Rejection | None = None


def split_batch(body: bytes, kind: str, max_records: int) -> list[BatchRecord] | Rejection:
    """Split an (inflated) batch body; a :class:`Rejection` when the batch as a whole is malformed."""
    width = BATCH_KINDS[kind]
    if body.endswith(b"\n"):
        body = body[:-1]
    if not body:
        return Rejection(400, "empty_body", "the batch has no records")
    fields = body.split(b"\t")
    if len(fields) % width:
        return Rejection(400, "malformed_batch", f"a {kind} body is groups of {width} tab-separated fields; "
                                                 f"got {len(fields)} fields")
    count = len(fields) // width
    if count > max_records:
        return Rejection(413, "too_many_records", f"{count} records in one batch; send at most {max_records}")
    records = []
    for start in range(0, len(fields), width):
        *path_fields, json_bytes = fields[start:start + width]
        records.append(_record(path_fields, json_bytes))
    return records


def _record(path_fields: list[bytes], body: bytes) -> BatchRecord:
    try:
        parts = [field.decode("utf-8") for field in path_fields]
    except UnicodeDecodeError:
        return BatchRecord(None, body, Rejection(400, "invalid_path_encoding", "an id or dimension is not UTF-8"))
    if any("/" in part for part in parts):
        return BatchRecord(None, body, Rejection(400, "invalid_character", "an id or dimension holds '/'"))
    return BatchRecord("/".join(parts), body)
