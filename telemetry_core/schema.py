"""The dimension schema (``telemetry_schema.json``): which dimensions partition
the store, in which order, and which values each allows.

Format (the original telemetry-server's)::

    {"version": 1,
     "dimensions": [{"field_name": "reason", "allowed_values": ["idle-daily", "saved-session"]},
                    {"field_name": "appVersion", "allowed_values": "*"},
                    {"field_name": "memsize", "allowed_values": {"min": 448, "max": 500}}]}

A value outside a dimension's allowed list (or range) becomes ``OTHER``; a
missing value becomes ``UNKNOWN``; characters that are not safe in a file
name become ``_`` and a leading ``_`` becomes ``-``, so a dimension value can
never name a path outside the store nor one of the reserved ``_*`` areas.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from .errors import TelemetryError

OTHER = "OTHER"
UNKNOWN = "UNKNOWN"
MAX_VALUE_LENGTH = 100
MAX_SCHEMA_BYTES = 1 << 20
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")


class SchemaError(TelemetryError):
    """The schema file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class Dimension:
    """One dimension: ``allowed`` is ``"*"``, a frozenset of strings, or a ``(min, max)`` range."""

    name: str
    allowed: Any

    def apply(self, value: Any) -> str:
        """The partition value for a raw value (``OTHER``/``UNKNOWN``/sanitized)."""
        if value is None or value == "":
            return UNKNOWN
        if isinstance(self.allowed, tuple):
            number = _number(value)
            low, high = self.allowed
            if number is None or not (low <= number <= high):
                return OTHER
            return safe_component(str(value))
        text = str(value)
        if self.allowed != "*" and text not in self.allowed:
            return OTHER
        return safe_component(text)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def safe_component(text: str) -> str:
    """Make ``text`` safe as one file-name component: no separators, no dot
    names, and no leading ``_`` (names starting with ``_`` are reserved for
    the system's own top-level areas, such as ``_invalid/`` and ``_ledger/``
    in the archive, so a dimension value can never collide with them)."""
    cleaned = _UNSAFE.sub("_", text)[:MAX_VALUE_LENGTH]
    if cleaned in ("", ".", ".."):
        return UNKNOWN
    if cleaned[0] == "_":
        cleaned = "-" + cleaned[1:]
    return cleaned


class Schema:
    """An ordered list of :class:`Dimension`; ``names`` gives their order."""

    def __init__(self, dimensions: list[Dimension], source: str = "<schema>") -> None:
        if not dimensions:
            raise SchemaError(f"{source}: a schema needs at least one dimension")
        self.dimensions = dimensions
        self.source = source
        self.names = tuple(d.name for d in dimensions)

    def apply(self, values: Mapping[str, Any]) -> tuple[str, ...]:
        """Partition values for a record's raw dimension values, in schema order."""
        return tuple(d.apply(values.get(d.name)) for d in self.dimensions)

    @classmethod
    def from_json(cls, document: Any, source: str = "<schema>") -> "Schema":
        if not isinstance(document, dict):
            raise SchemaError(f"{source}: the schema must be a JSON object with 'version' and 'dimensions'")
        if document.get("version") != 1:
            raise SchemaError(f"{source}: unsupported schema version {document.get('version')!r} (expected 1)")
        entries = document.get("dimensions")
        if not isinstance(entries, list):
            raise SchemaError(f"{source}: 'dimensions' must be a list")
        dimensions, seen = [], set()
        for index, entry in enumerate(entries):
            dimensions.append(_dimension(entry, f"{source}: dimensions[{index}]"))
            if dimensions[-1].name in seen:
                raise SchemaError(f"{source}: dimensions[{index}]: duplicate field_name {dimensions[-1].name!r}")
            seen.add(dimensions[-1].name)
        return cls(dimensions, source)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Schema":
        """Load a schema file; ``None`` loads the copy shipped in the package."""
        if path is None:
            text = resources.files("telemetry_core").joinpath("data/telemetry_schema.json").read_text()
            return cls.from_json(json.loads(text), "telemetry_core/data/telemetry_schema.json")
        source = str(path)
        try:
            raw = Path(path).read_bytes()[: MAX_SCHEMA_BYTES + 1]
        except OSError as exc:
            raise SchemaError(f"{source}: cannot read schema: {exc.strerror}") from None
        if len(raw) > MAX_SCHEMA_BYTES:
            raise SchemaError(f"{source}: schema is larger than {MAX_SCHEMA_BYTES} bytes")
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise SchemaError(f"{source}: not valid JSON: {exc}") from None
        return cls.from_json(document, source)


def _dimension(entry: Any, where: str) -> Dimension:
    if not isinstance(entry, dict):
        raise SchemaError(f"{where}: must be an object with field_name and allowed_values")
    name = entry.get("field_name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
        raise SchemaError(f"{where}: field_name must be an identifier, got {name!r}")
    allowed = entry.get("allowed_values")
    if allowed == "*":
        return Dimension(name, "*")
    if isinstance(allowed, list) and allowed and all(isinstance(v, str) for v in allowed):
        return Dimension(name, frozenset(allowed))
    if isinstance(allowed, dict) and set(allowed) == {"min", "max"}:
        low, high = _number(allowed["min"]), _number(allowed["max"])
        if low is not None and high is not None and low <= high:
            return Dimension(name, (low, high))
    raise SchemaError(f"{where} ({name}): allowed_values must be \"*\", a non-empty list of strings, "
                      f"or {{\"min\": n, \"max\": m}} with min <= max")
