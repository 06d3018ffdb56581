"""Built-in plugin: the partitioned store layout and the v2 / invalid line formats.

Valid records are appended as ``<uuid>\\t<json>\\n`` (the v2 format) to::

    <dim 1>/<dim 2>/.../<dim N-2>/<dim N-1>.<dim N>.<node>.<seq>.log

with the schema's dimensions in order (by default
``reason/appName/appUpdateChannel/appVersion/appBuildID.submission_date``).
Records that failed a stage are appended to::

    _invalid/<category>/<submission_date>.<node>.<seq>.log

one line each: ``<uuid>\\t<json>\\n`` where the JSON object holds the
``category``, the ``detail``, the submission ``path``, ``received_at_ms``,
``client_addr``, ``source`` (spool file and offset) and ``body_b64``: the
body exactly as it was received, base64-encoded.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from ..errors import RecordError
from ..hookspecs import hookimpl
from ..schema import UNKNOWN, Schema, safe_component

INVALID_PREFIX = "_invalid"


def partition_path(values: tuple[str, ...], node_id: str, seq: int) -> str:
    """The store path of a record with schema-applied dimension ``values``."""
    directories = "/".join(values[:-2])
    name = ".".join(values[-2:]) if len(values) >= 2 else values[-1]
    prefix = f"{directories}/" if directories else ""
    return f"{prefix}{name}.{node_id}.{seq}.log"


def invalid_path(category: str, submission_date: str, node_id: str, seq: int) -> str:
    return f"{INVALID_PREFIX}/{safe_component(category)}/{submission_date}.{node_id}.{seq}.log"


def invalid_line(record: Any, error: RecordError) -> bytes:
    """The line a rejected record is stored as (its original bytes base64-encoded)."""
    document = {
        "category": error.category,
        "detail": error.detail,
        "path": record.path,
        "received_at_ms": record.received_at_ms,
        "client_addr": record.client_addr,
        "source": record.source,
        "body_b64": base64.b64encode(record.raw).decode("ascii"),
    }
    record_id = record.id if record.id and "\t" not in record.id and "\n" not in record.id else "-"
    return record_id.encode() + b"\t" + orjson.dumps(document) + b"\n"


@hookimpl(trylast=True)
def telemetry_store_partition(record: Any, schema: Schema, node_id: str, seq: int) -> str:
    values = tuple(record.dims.get(name, UNKNOWN) for name in schema.names)
    return partition_path(values, node_id, seq)


@hookimpl
def telemetry_store_record(record: Any, partition: str, batch: Any) -> None:
    if record.stored_json is None:
        raise RecordError("write_failed", "the record was not serialized before storing")
    batch.append(partition, b"".join((record.id.encode(), b"\t", record.stored_json, b"\n")))


@hookimpl
def telemetry_store_invalid(record: Any, error: RecordError, batch: Any) -> None:
    date = record.dims.get("submission_date") or UNKNOWN
    batch.append(invalid_path(error.category, date, batch.node_id, batch.seq), invalid_line(record, error))
