"""Turn one spooled submission into a :class:`~telemetry_core.records.Record`.

Steps, each failing with a named :class:`~telemetry_core.errors.RecordError`
category (the record then goes to ``_invalid/<category>/``):

1. the path (what followed ``/submit/telemetry/``; a legacy log may hold the
   whole URL path) is parsed by ``telemetry_receive_parse_path`` into the
   submission id and dimensions;
2. a gzip body is inflated with a bound (``oversized_data`` past it,
   ``corrupted_data`` when broken); an empty body is ``empty_data``;
3. the JSON is parsed (``corrupted_data``; text that is not UTF-8, or
   holds lone surrogate escapes, is repaired with U+FFFD and kept with a
   warning, see :mod:`telemetry_core.store.process.payload_text`) and must
   be an object (``bad_payload``) within what a record may cost
   (``process.limits``: ``too_deep``, ``key_too_long``,
   ``too_many_histograms``, ``too_many_buckets``; see
   :mod:`telemetry_core.store.process.limits`);
4. dimensions missing from the path (the id-only form) are taken from the
   payload's ``info`` -- for Firefox OS and unified pings, the ``info``
   conversion will build (:func:`telemetry_core.convert.shapes.dimension_info`);
   ``submission_date`` is the receive day (UTC, ``YYYYMMDD``); the schema
   maps each value to its partition value.

:func:`convert` then runs the convert hooks and :func:`serialize` makes the
stored bytes once (``record.stored_json``, ``record.body_hash``).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

from ...compress import bounded_gzip
from ...convert.shapes import dimension_info, spec_request
from ...errors import RECORD_ERROR_CATEGORIES, RecordError
from .limits import RecordLimits, check_payload
from .payload_text import loads_payload
from ...records import Record, Rejection
from ...schema import Schema

SUBMIT_PREFIX = "/submit/telemetry/"
GZIP_MAGIC = b"\x1f\x8b"
#: Path rejection reasons of the receive plugins that have a category of their own.
_PATH_CATEGORIES = {"invalid_character": "invalid_control_char"}


def inflate(body: bytes, limit: int) -> bytes:
    """Inflate a gzip body, refusing to produce more than ``limit`` bytes."""
    try:
        return bounded_gzip.inflate(body, limit)
    except bounded_gzip.GzipError as error:
        category = "oversized_data" if error.reason == "inflated_too_large" else "corrupted_data"
        raise RecordError(category, str(error)) from None


def submission_day(timestamp_ms: int) -> str:
    return time.strftime("%Y%m%d", time.gmtime(timestamp_ms / 1000))


def raw_record(*, path: str, body: bytes, timestamp_ms: int, client_addr: str | None, source: str) -> Record:
    """A record as spooled, before anything is decoded (what a quarantined record keeps)."""
    relative = path[len(SUBMIT_PREFIX):] if path.startswith(SUBMIT_PREFIX) else path.lstrip("/")
    return Record(id="", path=relative, raw=body, received_at_ms=timestamp_ms, client_addr=client_addr,
                  source=source, dims={"submission_date": submission_day(timestamp_ms)})


def decode(engine: Any, *, path: str, body: bytes, timestamp_ms: int, client_addr: str | None,
           source: str, schema: Schema, max_inflated_bytes: int,
           limits: RecordLimits = RecordLimits()) -> Record:
    """Decode one spooled submission; raises :class:`RecordError` (the partial
    record is on ``error.record`` so it can be stored as invalid)."""
    record = raw_record(path=path, body=body, timestamp_ms=timestamp_ms, client_addr=client_addr, source=source)
    try:
        _decode_into(engine, record, schema, max_inflated_bytes, limits)
    except RecordError as error:
        error.record = record  # type: ignore[attr-defined]
        raise
    return record


def _decode_into(engine: Any, record: Record, schema: Schema, max_inflated_bytes: int,
                 limits: RecordLimits) -> None:
    parsed = engine.parse_path(path=record.path)
    if isinstance(parsed, Rejection):
        category = _PATH_CATEGORIES.get(parsed.reason, parsed.reason)
        if category not in RECORD_ERROR_CATEGORIES:
            category = "invalid_path"
        raise RecordError(category, parsed.detail or parsed.reason)
    record.id = parsed.id
    raw_dims = dict(parsed.dims)
    body = record.raw
    if not body:
        raise RecordError("empty_data", "the body is empty")
    if body[:2] == GZIP_MAGIC:
        body = inflate(body, max_inflated_bytes)
        if not body:
            raise RecordError("empty_data", "the gzip body inflates to nothing")
    elif len(body) > max_inflated_bytes:
        raise RecordError("oversized_data", f"body is larger than {max_inflated_bytes} bytes")
    payload, warnings = loads_payload(body)
    if warnings:
        record.warnings.extend(warnings)
    if not isinstance(payload, dict):
        raise RecordError("bad_payload", f"the payload is a JSON {type(payload).__name__}, not an object")
    check_payload(payload, limits)
    record.payload = payload
    info = dimension_info(payload)
    if info is not None:
        for name in schema.names:
            if name not in raw_dims and isinstance(info.get(name), (str, int, float)):
                raw_dims[name] = info[name]
    raw_dims["submission_date"] = record.dims["submission_date"]
    record.dims = dict(zip(schema.names, schema.apply(raw_dims)))


def convert(engine: Any, record: Record) -> None:
    """Run the convert hooks on a decoded record (looking its spec up only when
    it has histograms to convert, see :func:`telemetry_core.convert.shapes.spec_request`);
    warnings go to ``record.warnings``."""
    payload = record.payload
    spec = None
    wanted = spec_request(payload)
    if wanted is not None:
        revision, info = wanted
        spec = engine.histogram_spec(revision=revision, info=info)
    record.warnings.extend(engine.convert_payload(record=record, spec=spec))


def stored_json(record: Record) -> bytes:
    """The converted payload as the JSON bytes that are stored.

    A payload the convert hooks left unserializable (nested past JSON's
    limit, a string with a lone surrogate, a value of a type JSON has no
    form for) is a :class:`RecordError`: ``too_deep`` or ``bad_payload``."""
    try:
        return orjson.dumps(record.payload)
    except orjson.JSONEncodeError as exc:
        message = " ".join(str(exc).split())[:300]
        category = "too_deep" if "recursion" in message.lower() else "bad_payload"
        raise RecordError(category, f"the converted payload cannot be stored as JSON: {message}") from None


def serialize(record: Record) -> None:
    """Serialize the payload once: ``stored_json`` (:func:`stored_json`) and its
    ``body_hash`` (blake2b-128), which de-duplication uses."""
    stored = record.stored_json = stored_json(record)
    record.body_hash = hashlib.blake2b(stored, digest_size=16).hexdigest()
