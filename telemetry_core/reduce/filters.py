"""The dimension filter of a MapReduce job, in the original telemetry-server format.

A filter is a JSON file::

    {"version": 1,
     "include_invalid": false,
     "dimensions": [
       {"field_name": "reason", "allowed_values": ["saved-session"]},
       {"field_name": "appName", "allowed_values": "*"},
       {"field_name": "appBuildID", "allowed_values": {"min": "20130600"}},
       ...]}

Per dimension, ``allowed_values`` is ``"*"`` (anything), a list of values
(or one string), or a range ``{"min": ..., "max": ...}`` (either bound may
be left out).  A range with string bounds compares as strings, like the
original (build ids and dates have fixed widths, so that is their order); a
range with number bounds compares numerically, and values that are not
numbers are outside it.  Dimensions are named by ``field_name`` and must
appear in the schema's order; a dimension left out allows anything.
``include_invalid: true`` also reads the records of ``_invalid/`` (see
docs/mapreduce.md for their ``dims``).

List values go through the same sanitizing as stored partition names
(:func:`telemetry_core.schema.safe_component`), so ``"Firefox OS"``
matches the partition ``Firefox_OS``.  The filter is applied to partition
names while listing (:mod:`telemetry_core.reduce.inputs`), so excluded
partitions are never listed in full.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import TelemetryError
from ..schema import Schema, safe_component

MAX_FILTER_BYTES = 4 << 20
KNOWN_KEYS = ("version", "dimensions", "include_invalid")


class FilterError(TelemetryError):
    """The filter file is unreadable or not a valid filter."""


@dataclass(frozen=True)
class Allowed:
    """What one dimension allows: ``any``, a set of ``values``, or a ``low``/``high`` range."""

    any: bool = False
    values: frozenset[str] | None = None
    low: str | float | None = None
    high: str | float | None = None

    def __call__(self, value: str) -> bool:
        if self.any:
            return True
        if self.values is not None:
            return value in self.values
        bound = self.low if self.low is not None else self.high
        candidate: str | float
        if isinstance(bound, str):
            candidate = value
        else:
            try:
                candidate = float(value)
            except ValueError:
                return False
        if self.low is not None and candidate < self.low:  # type: ignore[operator]
            return False
        if self.high is not None and candidate > self.high:  # type: ignore[operator]
            return False
        return True


ANY = Allowed(any=True)


@dataclass(frozen=True)
class DimensionFilter:
    """A validated filter: one :class:`Allowed` per schema dimension, in schema order."""

    names: tuple[str, ...]
    allowed: tuple[Allowed, ...]
    include_invalid: bool = False

    @classmethod
    def everything(cls, schema: Schema, *, include_invalid: bool = False) -> "DimensionFilter":
        return cls(schema.names, tuple(ANY for _ in schema.names), include_invalid)

    def includes(self, level: int, value: str) -> bool:
        """Whether dimension number ``level`` allows the partition value ``value``."""
        return self.allowed[level](value)

    def matches(self, dims: Sequence[str]) -> bool:
        return all(allowed(value) for allowed, value in zip(self.allowed, dims))

    def finite_values(self, level: int) -> frozenset[str] | None:
        """The values dimension ``level`` allows when it lists them, else ``None``."""
        return self.allowed[level].values

    def index(self, name: str) -> int | None:
        return self.names.index(name) if name in self.names else None

    @classmethod
    def load(cls, path: str | Path, schema: Schema) -> "DimensionFilter":
        """Read and validate a filter file; raises :class:`FilterError`."""
        try:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_FILTER_BYTES + 1)
        except FileNotFoundError:
            raise FilterError(f"filter {path} does not exist; give a JSON filter file to --filter") from None
        except OSError as exc:
            raise FilterError(f"filter {path} cannot be read: {exc.strerror}") from None
        if len(raw) > MAX_FILTER_BYTES:
            raise FilterError(f"filter {path} is larger than {MAX_FILTER_BYTES >> 20} MiB")
        try:
            document = json.loads(raw)
        except UnicodeDecodeError:
            raise FilterError(f"filter {path} is not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise FilterError(f"filter {path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); "
                              f"fix the file") from None
        return cls.from_json(document, schema, str(path))

    @classmethod
    def from_json(cls, document: Any, schema: Schema, source: str = "<filter>") -> "DimensionFilter":
        """Validate a parsed filter against ``schema``; raises :class:`FilterError`."""
        if not isinstance(document, dict):
            raise FilterError(f"filter {source}: must be a JSON object with \"version\" and \"dimensions\"")
        unknown = sorted(set(document) - set(KNOWN_KEYS))
        if unknown:
            raise FilterError(f"filter {source}: unknown key {unknown[0]!r} (known keys: {', '.join(KNOWN_KEYS)})")
        if document.get("version", 1) != 1:
            raise FilterError(f"filter {source}: unsupported version {document.get('version')!r}; use \"version\": 1")
        include_invalid = document.get("include_invalid", False)
        if not isinstance(include_invalid, bool):
            raise FilterError(f"filter {source}: include_invalid must be true or false, got {include_invalid!r}")
        entries = document.get("dimensions", [])
        if not isinstance(entries, list):
            raise FilterError(f"filter {source}: \"dimensions\" must be a list of "
                              f"{{\"field_name\": ..., \"allowed_values\": ...}} objects")
        allowed: dict[str, Allowed] = {}
        previous = -1
        for number, entry in enumerate(entries):
            where = f"filter {source}: dimensions[{number}]"
            if not isinstance(entry, dict) or set(entry) - {"field_name", "allowed_values"}:
                raise FilterError(f"{where}: must be an object with field_name and allowed_values only")
            name = entry.get("field_name")
            if name not in schema.names:
                raise FilterError(f"{where}: {name!r} is not a dimension of the schema "
                                  f"({', '.join(schema.names)})")
            if name in allowed:
                raise FilterError(f"{where}: {name!r} is listed twice")
            position = schema.names.index(name)
            if position < previous:
                raise FilterError(f"{where}: {name!r} is out of order; list dimensions in the schema's order "
                                  f"({', '.join(schema.names)})")
            previous = position
            if "allowed_values" not in entry:
                raise FilterError(f"{where} ({name}): allowed_values is missing; use \"*\" to allow anything")
            allowed[name] = _allowed(entry["allowed_values"], f"{where} ({name})")
        return cls(schema.names, tuple(allowed.get(name, ANY) for name in schema.names), include_invalid)


def _allowed(spec: Any, where: str) -> Allowed:
    if spec == "*":
        return ANY
    if isinstance(spec, str):
        return Allowed(values=frozenset([safe_component(spec)]))
    if isinstance(spec, list):
        if not spec:
            raise FilterError(f"{where}: an empty list allows nothing; use \"*\" to allow anything")
        values = []
        for item in spec:
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise FilterError(f"{where}: list items must be strings (or numbers), got {item!r}")
            values.append(safe_component(str(item)))
        return Allowed(values=frozenset(values))
    if isinstance(spec, dict):
        extra = set(spec) - {"min", "max"}
        if extra or not spec:
            raise FilterError(f"{where}: a range is {{\"min\": ..., \"max\": ...}} (either may be left out), "
                              f"got keys {sorted(spec)}")
        low, high = spec.get("min"), spec.get("max")
        kinds = {_bound_kind(bound, where) for bound in (low, high) if bound is not None}
        if len(kinds) > 1:
            raise FilterError(f"{where}: min and max must both be strings or both be numbers")
        if low is not None and high is not None and low > high:
            raise FilterError(f"{where}: min {low!r} is greater than max {high!r}; the range allows nothing")
        if kinds == {"number"}:
            return Allowed(low=None if low is None else float(low), high=None if high is None else float(high))
        return Allowed(low=low, high=high)
    raise FilterError(f"{where}: allowed_values must be \"*\", a list of values or {{\"min\": ..., \"max\": ...}}, "
                      f"got {spec!r}")


def _bound_kind(bound: Any, where: str) -> str:
    if isinstance(bound, str):
        return "string"
    if isinstance(bound, (int, float)) and not isinstance(bound, bool):
        return "number"
    raise FilterError(f"{where}: range bounds must be strings or numbers, got {bound!r}")
