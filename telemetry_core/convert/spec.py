"""Bucket bounds per histogram name for one ``Histograms.json`` revision.

:class:`HistogramSpec` is what the converter and MapReduce jobs ask "what
are the buckets of histogram NAME?".  It applies the ``STARTUP_`` rule
(HISTOGRAMS.md §2.3), computes each definition lazily once, and keeps a
:class:`BucketIndex` (bounds plus a ``str(bound) -> position`` dict) so a
converter needs one dict lookup per bucket value.

A definition that cannot give bounds (a C++ constant, a bad key ...) is
remembered with its :class:`~telemetry_core.convert.buckets.DefinitionError`; every
other histogram of the revision stays usable.  A C++ constant can be filled
in from a ping's own ``bucket_count``/``range`` (:meth:`HistogramSpec.resolve`).

Add-on histograms have no ``Histograms.json`` entry: :func:`addon_histogram_index`
builds their bounds from the entry's own ``histogram_type``/``range``/``bucket_count``
(§2.4).
"""

from __future__ import annotations

import functools
import weakref
from array import array
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import orjson

from .buckets import (
    KIND_BY_HISTOGRAM_TYPE,
    BucketLayout,
    DefinitionError,
    UnresolvedConstantError,
    bucket_bounds,
    check_layout,
    layout_from_parameters,
    parse_definition,
)

STARTUP_PREFIX = "STARTUP_"
#: Number of statistics after the buckets in a v2 histogram array.
STATISTICS_COUNT = 5
#: C++ constants resolved from pings' parameters kept per spec (then it starts over).
RESOLVED_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class BucketIndex:
    """The buckets of one layout: ``bounds`` (lower bounds, underflow 0 first),
    ``position``, mapping each bound as a decimal string (the form of a
    ping's ``values`` keys) to its index, and ``zeros``, one 0 per bucket
    (the start of every converted array).  When a bound repeats (only for an
    invalid linear low of 0), the last index wins, as on the original server.
    ``position`` is shared: never modify it.  ``packed_bounds`` holds the
    bounds as native signed 64-bit integers for the compiled converter
    (empty if one did not fit)."""

    layout: BucketLayout
    bounds: tuple[int, ...]
    position: dict[str, int]
    zeros: tuple[int, ...]
    packed_bounds: bytes = b""

    @property
    def bucket_count(self) -> int:
        return len(self.bounds)


# Every BucketIndex alive, by layout: revisions share most layouts, and one copy
# of each keeps the converter's working set small.
_LIVE_INDEXES: weakref.WeakValueDictionary[BucketLayout, BucketIndex] = weakref.WeakValueDictionary()


@functools.lru_cache(maxsize=64)  # also keeps recent add-on and C++-constant layouts alive
def bucket_index(layout: BucketLayout) -> BucketIndex:
    """The :class:`BucketIndex` of a valid layout, shared by everyone who holds one."""
    index = _LIVE_INDEXES.get(layout)
    if index is None:
        bounds = bucket_bounds(layout.kind, layout.low, layout.high, layout.n_buckets)
        index = BucketIndex(layout, bounds, {str(bound): i for i, bound in enumerate(bounds)}, (0,) * len(bounds),
                            _packed(bounds))
        _LIVE_INDEXES[layout] = index
    return index


def _packed(bounds: tuple[int, ...]) -> bytes:
    try:
        return array("q", bounds).tobytes()
    except OverflowError:  # not for a valid layout (bounds <= MAX_BOUND); the Python path copes
        return b""


class HistogramSpec:
    """The histogram definitions of one ``Histograms.json`` revision.

    ``definitions`` is the parsed JSON object (name -> definition).  Lookups
    never fail because some *other* definition is broken.
    """

    def __init__(self, definitions: Mapping[str, Any], *, revision: str | None = None) -> None:
        if not isinstance(definitions, Mapping):
            raise DefinitionError(f"Histograms.json{_for(revision)} must be an object mapping "
                                  f"histogram names to definitions, got {type(definitions).__name__}")
        self.revision = revision
        self._definitions = dict(definitions)
        self._index_by_name: dict[str, BucketIndex] = {}      # ping names, STARTUP_ aliases included
        self._outcome_by_definition: dict[str, BucketIndex | DefinitionError] = {}
        # (definition, bucket_count, range, histogram_type) -> index resolved from a ping
        self._resolved: dict[tuple[str, int | None, tuple[int, int], int | None], BucketIndex] = {}
        #: ``cached_index(name)``: the index of ``name`` if :meth:`index` already
        #: computed it, else ``None`` -- a dict lookup, for converters' hot loops.
        self.cached_index = self._index_by_name.get
        #: The same cache as a dict (ping name -> :class:`BucketIndex`), for the
        #: compiled converter.  Read it, never modify it.
        self.cached_indexes: Mapping[str, BucketIndex] = self._index_by_name

    @classmethod
    def from_json(cls, document: bytes | str, *, revision: str | None = None) -> HistogramSpec:
        """Build a spec from the text of a ``Histograms.json`` file."""
        try:
            definitions = orjson.loads(document)
        except orjson.JSONDecodeError as error:
            raise DefinitionError(f"Histograms.json{_for(revision)}: json parse failed ({error})") from None
        return cls(definitions, revision=revision)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.definition_name(name) is not None

    def __len__(self) -> int:
        return len(self._definitions)

    def __iter__(self) -> Iterator[str]:
        return iter(self._definitions)

    def __repr__(self) -> str:
        return f"<HistogramSpec {self.revision or '(no revision)'}: {len(self)} definitions>"

    def definition_name(self, name: str) -> str | None:
        """The definition a ping's histogram ``name`` uses (the ``STARTUP_`` rule).

        The exact name wins; otherwise one ``STARTUP_`` prefix is stripped.
        ``None`` when neither is defined.
        """
        if name in self._definitions:
            return name
        if name.startswith(STARTUP_PREFIX) and name[len(STARTUP_PREFIX):] in self._definitions:
            return name[len(STARTUP_PREFIX):]
        return None

    def index(self, name: str) -> BucketIndex | None:
        """The :class:`BucketIndex` for histogram ``name``, ``None`` if it is not defined.

        Raises the definition's :class:`DefinitionError` (an
        :class:`UnresolvedConstantError` for a C++ constant) when it is
        defined but gives no bounds.  Computed once per name.
        """
        index = self._index_by_name.get(name)
        if index is not None:
            return index
        definition_name = self.definition_name(name)
        if definition_name is None:
            return None  # unknown names are not cached: a hostile stream must not grow memory
        index = self._definition_index(definition_name)
        self._index_by_name[name] = index
        return index

    def bounds(self, name: str, *, bucket_count: int | None = None) -> tuple[int, ...] | None:
        """The bucket lower bounds of histogram ``name``, ``None`` if it is not defined.

        ``bucket_count`` (for a stored v2 array: its length minus 5) fills in
        a C++ constant such as GC_REASON_2's ``n_values``; without it such
        definitions raise :class:`UnresolvedConstantError`.  Other broken
        definitions raise their :class:`DefinitionError`.
        """
        index = self.resolve(name, bucket_count=bucket_count) if bucket_count is not None else self.index(name)
        return None if index is None else index.bounds

    def layout(self, name: str) -> BucketLayout | None:
        """The (kind, low, high, n_buckets) of histogram ``name``; raises like :meth:`index`."""
        index = self.index(name)
        return None if index is None else index.layout

    def resolve(self, name: str, *, bucket_count: int | None = None,
                value_range: Sequence[int] | None = None,
                histogram_type: int | None = None) -> BucketIndex | None:
        """Like :meth:`index`, but fills a C++ constant from a ping's own parameters.

        The missing value is taken from ``bucket_count`` (``n_buckets``, or
        ``n_values`` = bucket_count - 1) or ``value_range`` (``low``/``high``);
        every parameter given must then agree with the resulting layout
        (e.g. GC_REASON_2 with bucket_count 101 needs range [1, 100] and
        histogram_type 1).  Raises :class:`DefinitionError` when the needed
        value is missing or anything disagrees.  Definitions without a
        constant ignore the ping's parameters, as the original converter did.
        """
        index = self._index_by_name.get(name)
        if index is not None:
            return index
        definition_name = self.definition_name(name)
        if definition_name is None:
            return None
        outcome = self._definition_outcome(definition_name)
        if isinstance(outcome, BucketIndex):
            self._index_by_name[name] = outcome
            return outcome
        if not isinstance(outcome, UnresolvedConstantError):
            raise _fresh(outcome)
        # Every ping of a revision sends the same parameters for a C++ constant:
        # remember the outcome per exact-int parameters, in a bounded dict.
        key = (definition_name, bucket_count, tuple(value_range), histogram_type) \
            if _are_ints(bucket_count, histogram_type) and _is_int_pair(value_range) else None
        index = self._resolved.get(key) if key is not None else None
        if index is None:
            index = bucket_index(_layout_from_ping(outcome, bucket_count, value_range, histogram_type))
            if key is not None:
                if len(self._resolved) >= RESOLVED_CACHE_SIZE:
                    self._resolved.clear()
                self._resolved[key] = index
        return index

    def definition_errors(self) -> dict[str, DefinitionError]:
        """Every definition of this revision that gives no bounds, with its error."""
        outcomes = {name: self._definition_outcome(name) for name in self._definitions}
        return {name: outcome for name, outcome in outcomes.items() if isinstance(outcome, DefinitionError)}

    def _definition_index(self, definition_name: str) -> BucketIndex:
        outcome = self._definition_outcome(definition_name)
        if isinstance(outcome, DefinitionError):
            raise _fresh(outcome)
        return outcome

    def _definition_outcome(self, definition_name: str) -> BucketIndex | DefinitionError:
        """The index of a definition or the error it gives, computed once."""
        outcome = self._outcome_by_definition.get(definition_name)
        if outcome is None:
            outcome = self._outcome_by_definition[definition_name] = self._parse(definition_name)
        return outcome

    def _parse(self, definition_name: str) -> BucketIndex | DefinitionError:
        try:
            layout = parse_definition(definition_name, self._definitions[definition_name])
        except DefinitionError as error:
            # Remembered for the spec's life: drop the traceback, whose frames
            # would keep the payload being converted alive with it.
            error.__context__ = None
            return error.with_traceback(None)
        return bucket_index(layout)


def _fresh(error: DefinitionError) -> DefinitionError:
    """A copy of a remembered error, to raise.  Raising the remembered one itself
    would hang each raise's traceback -- and the caller's frames, payload
    included -- on it until the next raise."""
    fresh = type(error).__new__(type(error), *error.args)
    fresh.args = error.args
    fresh.__dict__.update(error.__dict__)
    return fresh


def _are_ints(*values: Any) -> bool:
    return all(value is None or type(value) is int for value in values)


def _for(revision: str | None) -> str:
    return f" for {revision}" if revision else ""


def _layout_from_ping(unresolved: UnresolvedConstantError, bucket_count: int | None,
                      value_range: Sequence[int] | None, histogram_type: int | None) -> BucketLayout:
    """Fill ``unresolved.parameter`` from the ping and check the ping agrees with the result."""
    name, parameter = unresolved.name, unresolved.parameter
    source = {"n_values": "bucket_count", "n_buckets": "bucket_count", "low": "range", "high": "range"}[parameter]
    if bucket_count is not None and type(bucket_count) is not int:
        raise DefinitionError(f"histogram {name!r}: bucket_count must be an integer, got {bucket_count!r}")
    if value_range is not None and not _is_int_pair(value_range):
        raise DefinitionError(f"histogram {name!r}: range must be [low, high] integers, got {value_range!r}")
    if histogram_type is not None and type(histogram_type) is not int:
        raise DefinitionError(f"histogram {name!r}: histogram_type must be an integer, got {histogram_type!r}")
    given = bucket_count if source == "bucket_count" else value_range
    if given is None:
        raise DefinitionError(f"histogram {name!r}: {parameter} is the C++ constant {unresolved.constant!r} "
                              f"and the ping has no {source} to resolve it")
    parameters = dict(unresolved.known)
    if parameter == "n_values":
        parameters[parameter] = bucket_count - 1
    elif parameter == "n_buckets":
        parameters[parameter] = bucket_count
    else:
        parameters[parameter] = value_range[0] if parameter == "low" else value_range[1]
    layout = layout_from_parameters(unresolved.kind, parameters)
    check_layout(name, layout)
    _check_ping_agrees(name, layout, bucket_count, value_range, histogram_type)
    return layout


def _check_ping_agrees(name: str, layout: BucketLayout, bucket_count: int | None,
                       value_range: Sequence[int] | None, histogram_type: int | None) -> None:
    declared = f"{layout.kind} ({layout.low}, {layout.high}, {layout.n_buckets})"
    if histogram_type is not None and histogram_type != layout.histogram_type:
        raise DefinitionError(f"histogram {name!r}: the ping's histogram_type {histogram_type!r} "
                              f"does not fit {declared}")
    if bucket_count is not None and bucket_count != layout.n_buckets:
        raise DefinitionError(f"histogram {name!r}: the ping's bucket_count {bucket_count} does not fit {declared}")
    if value_range is not None and tuple(value_range) != (layout.low, layout.high):
        raise DefinitionError(f"histogram {name!r}: the ping's range {list(value_range)} does not fit {declared}")


def _is_int_pair(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(type(v) is int for v in value)


# --------------------------------------------------------------------------
# Add-on histograms and stored records
# --------------------------------------------------------------------------

def addon_histogram_layout(name: str, entry: Mapping[str, Any]) -> BucketLayout:
    """The layout an add-on histogram entry describes itself (HISTOGRAMS.md §2.4).

    ``entry`` is the packed histogram from ``addonHistograms``; its
    ``histogram_type`` picks the rule and ``range``/``bucket_count`` give
    (low, high, n_buckets).  Boolean, flag and count entries must declare
    range [1, 2] and 3 buckets.  Raises :class:`DefinitionError` for missing
    or malformed fields and for layouts Gecko would refuse, including more
    than :data:`~telemetry_core.convert.buckets.MAX_BUCKET_COUNT` buckets.
    """
    if not isinstance(entry, Mapping):
        raise DefinitionError(f"add-on histogram {name!r} must be an object, got {type(entry).__name__}")
    for key in ("histogram_type", "range", "bucket_count"):
        if key not in entry:
            raise DefinitionError(f"add-on histogram {name!r} has no {key}; it cannot describe its buckets")
    histogram_type, value_range, bucket_count = entry["histogram_type"], entry["range"], entry["bucket_count"]
    if type(histogram_type) is not int or histogram_type not in KIND_BY_HISTOGRAM_TYPE:
        raise DefinitionError(f"add-on histogram {name!r}: histogram_type {histogram_type!r} is not one of "
                              f"{sorted(KIND_BY_HISTOGRAM_TYPE)}")
    if not _is_int_pair(value_range):
        raise DefinitionError(f"add-on histogram {name!r}: range must be [low, high] integers, got {value_range!r}")
    if type(bucket_count) is not int:
        raise DefinitionError(f"add-on histogram {name!r}: bucket_count must be an integer, got {bucket_count!r}")
    kind = KIND_BY_HISTOGRAM_TYPE[histogram_type]
    layout = BucketLayout(kind, value_range[0], value_range[1], bucket_count)
    if kind in ("boolean", "flag", "count") and layout != layout_from_parameters(kind, {}):
        raise DefinitionError(f"add-on histogram {name!r}: a {kind} histogram has range [1, 2] and "
                              f"3 buckets, got range {list(value_range)} and {bucket_count} buckets")
    check_layout(name, layout)
    return layout


def addon_histogram_index(name: str, entry: Mapping[str, Any]) -> BucketIndex:
    """The (cached) :class:`BucketIndex` of an add-on histogram entry; raises like
    :func:`addon_histogram_layout`."""
    return bucket_index(addon_histogram_layout(name, entry))


def record_bounds(payload: Mapping[str, Any], spec: HistogramSpec) -> dict[str, tuple[int, ...]]:
    """Bucket bounds for every histogram of a stored (ver 2) payload.

    Each array's length minus the 5 statistics resolves C++ constants, so
    GC_REASON_2 gets the bounds its array was written with (also for the
    102-bucket arrays of the original converter).  Histograms the spec
    cannot describe, or whose array length disagrees with the spec, are
    left out.
    """
    result: dict[str, tuple[int, ...]] = {}
    histograms = payload.get("histograms")
    if not isinstance(histograms, Mapping):
        return result
    for name, array in histograms.items():
        if not isinstance(array, list) or len(array) < STATISTICS_COUNT:
            continue
        bucket_count = len(array) - STATISTICS_COUNT
        try:
            bounds = spec.bounds(name, bucket_count=bucket_count)
        except DefinitionError:
            continue  # documented: histograms without usable bounds are left out
        if bounds is not None and len(bounds) == bucket_count:
            result[name] = bounds
    return result
