"""Convert classic (``ver`` 1) payloads to the compact ``ver`` 2 form.

Each histogram ``{"values": {"<lower bound>": count, ...}, "sum": ...}``
becomes one array (HISTOGRAMS.md §2.5)::

    [count_0, ..., count_N-1, sum, log_sum, log_sum_squares, sum_squares_lo, sum_squares_hi]

with N taken from the spec and -1 for a statistic the histogram lacks.

Failures raise :class:`~telemetry_core.errors.RecordError` with a category
from :data:`~telemetry_core.errors.RECORD_ERROR_CATEGORIES`, and leave the
payload untouched.  Problems that do not make the record wrong are returned
as warning names (see :data:`WARNINGS`).

Speed: a histogram costs one cached dict lookup for its bucket layout and
one dict lookup per ``values`` entry.  :func:`histogram_array` tries a fast
path written for the shapes Firefox sends; anything else (a missing
statistic, a bad key ...) is redone by :func:`_checked_array`, the
reference implementation, which either gives the same array or names the
problem.  The compiled module ``telemetry_core.convert._speedups`` (an optional C
extension built at install time) runs the same fast path over a whole
payload and leaves every other histogram to this code; :data:`COMPILED`
says whether it is in use.  Both give the same arrays and the same errors.
"""

from __future__ import annotations

from typing import Any, Mapping

from .buckets import DefinitionError, UnresolvedConstantError
from ..errors import RecordError
from .spec import BucketIndex, HistogramSpec, addon_histogram_index

try:
    from ._speedups import convert_histograms as _compiled_histograms
except ImportError:  # installed without a C compiler: the Python code below does the same, slower
    _compiled_histograms = None
#: Whether the compiled fast path is in use (``telemetry doctor`` reports it).
COMPILED = _compiled_histograms is not None

STATISTIC_KEYS = ("sum", "log_sum", "log_sum_squares", "sum_squares_lo", "sum_squares_hi")
#: Written in place of a statistic the histogram does not have.
MISSING_STATISTIC = -1
#: Largest bucket count accepted: what a 64-bit signed integer holds.
MAX_COUNT = 2**63 - 1

UNKNOWN_HISTOGRAM = "unknown_histogram"
#: Warning names :func:`convert_payload` returns, one per occurrence.
WARNINGS: dict[str, str] = {
    UNKNOWN_HISTOGRAM: "a histogram the revision's Histograms.json does not define "
                       "(after the STARTUP_ rule) was dropped; the record was kept",
}

_STATISTIC_TYPES = frozenset({int, float})  # bool is a subclass of int, but not a statistic


class _NotFastPath(Exception):
    """The histogram is not in the common shape; take the checked path."""


def convert_payload(payload: dict[str, Any], spec: HistogramSpec) -> list[str]:
    """Convert a classic payload's histograms in place and set ``payload["ver"]`` to 2.

    ``spec`` is the revision the caller picked for this payload (from
    ``info.revision``).  ``histograms`` and ``keyedHistograms`` are
    converted with :func:`convert_histogram_sections`; histograms the spec
    does not define are dropped and reported as :data:`UNKNOWN_HISTOGRAM`
    warnings; the list of warning names is returned (empty when all went
    well).  A payload with neither histograms nor ``info.revision`` (an
    Android ANR report, say) has nothing to convert and only gets ``ver`` 2.

    Raises ``RecordError("bad_payload", ...)`` when the payload is not a
    classic ver 1 payload with ``info`` (an already converted ver 2 payload
    included), when ``histograms`` is not an object, when it has a revision
    but no histograms, or when a histogram is malformed: not an object, no
    ``values`` object, a bucket key that is not a lower bound, a count that
    is not a non-negative integer, a statistic that is not a number, or --
    for a definition using a C++ constant -- a
    ``bucket_count``/``range``/``histogram_type`` that cannot fill it in.
    Raises ``RecordError("conversion_error", ...)`` when the spec's own
    definition of a histogram in the payload is broken.  On error the
    payload is left unchanged.
    """
    _check_classic(payload)
    warnings = convert_histogram_sections(payload, spec)
    payload["ver"] = 2
    return warnings


def convert_histogram_sections(holder: dict[str, Any], spec: HistogramSpec) -> list[str]:
    """Convert ``holder["histograms"]`` and ``holder["keyedHistograms"]`` in place.

    ``holder`` is the object that carries the histograms and the ``info``
    with their revision: a classic payload, or a unified ping's ``payload``.
    The original's rule holds: histograms need a revision and a revision
    needs histograms; an ``info`` with neither converts to nothing.  Keyed
    histograms (``{name: {key: histogram}}``) convert key by key with the
    definition of ``name``.  Raises ``RecordError`` as
    :func:`convert_payload` does; on error ``holder`` is left unchanged.
    Returns warning names.
    """
    info = holder.get("info")
    if not isinstance(info, dict):
        raise RecordError("bad_payload", "payload has no info object; a classic payload carries one")
    histograms = holder.get("histograms")
    if histograms is None:
        if "revision" in info:
            raise RecordError("bad_payload", "payload has info.revision but no histograms; "
                                             "a revision comes with histograms")
        keyed = holder.get("keyedHistograms")
        if keyed is None:
            return []
        converted_keyed, warnings = convert_keyed_histograms(keyed, spec)
        holder["keyedHistograms"] = converted_keyed
        return warnings
    if not isinstance(histograms, dict):
        raise RecordError("bad_payload", f"payload has histograms of type {type(histograms).__name__}; "
                                         f"expected an object of histograms")
    converted, warnings = convert_histograms(histograms, spec)
    keyed = holder.get("keyedHistograms")
    if keyed is not None:
        converted_keyed, keyed_warnings = convert_keyed_histograms(keyed, spec)
        holder["keyedHistograms"] = converted_keyed
        warnings += keyed_warnings
    holder["histograms"] = converted
    return warnings


def convert_histograms(histograms: dict[str, Any], spec: HistogramSpec) -> tuple[dict[str, Any], list[str]]:
    """``(converted, warnings)``: a new ``{name: v2 array}`` for a ``histograms`` object.

    Unknown names are left out, one :data:`UNKNOWN_HISTOGRAM` warning each.
    Raises ``RecordError`` as :func:`convert_payload` does.
    """
    done = None if _compiled_histograms is None else _compiled_histograms(histograms, spec.cached_indexes)
    # ``converted`` keeps the input order; the compiled pass leaves None for ``pending`` names.
    converted, pending = ({}, histograms) if done is None else done
    warnings: list[str] = []
    cached_index = spec.cached_index
    for name in pending:
        histogram = histograms[name]
        index = cached_index(name)
        if index is None:
            index = _spec_index(spec, name, histogram)
            if index is None:
                warnings.append(UNKNOWN_HISTOGRAM)
                converted.pop(name, None)
                continue
        converted[name] = histogram_array(name, histogram, index)
    return converted, warnings


def convert_keyed_histograms(keyed: Any, spec: HistogramSpec) -> tuple[dict[str, Any], list[str]]:
    """``(converted, warnings)`` for a ``keyedHistograms`` object ``{name: {key: histogram}}``.

    Every key of a name converts with that name's definition (``keyed``
    changes nothing in the buckets, HISTOGRAMS.md §1.1); a name the spec
    does not define is left out with one :data:`UNKNOWN_HISTOGRAM` warning.
    Raises ``RecordError("bad_payload", ...)`` when the section or a name's
    entry is not an object, or as :func:`convert_payload` does.
    """
    if not isinstance(keyed, dict):
        raise RecordError("bad_payload", f"keyedHistograms must be an object, got {type(keyed).__name__}")
    converted: dict[str, Any] = {}
    warnings: list[str] = []
    for name, by_key in keyed.items():
        if not isinstance(by_key, dict):
            raise RecordError("bad_payload", f"keyedHistograms[{name!r}] must be an object of histograms "
                                             f"by key, got {type(by_key).__name__}")
        index = spec.cached_index(name)
        rows: dict[str, Any] = {}
        for key, histogram in by_key.items():
            if index is None:
                index = _spec_index(spec, name, histogram)
                if index is None:
                    break
            rows[key] = histogram_array(name, histogram, index, key=key)
        if index is None:
            warnings.append(UNKNOWN_HISTOGRAM)
            continue
        converted[name] = rows
    return converted, warnings


def convert_addon_histograms(payload: dict[str, Any]) -> list[str]:
    """Convert ``payload["addonHistograms"]`` in place to v2 arrays.

    Every entry describes its own buckets (``histogram_type``, ``range``,
    ``bucket_count``; HISTOGRAMS.md §2.4), so no spec is needed.  A payload
    without ``addonHistograms`` is left alone.  Raises
    ``RecordError("bad_payload", ...)`` naming the add-on and histogram when
    an entry is malformed or describes a layout Gecko would refuse -- among
    them more than :data:`~telemetry_core.convert.buckets.MAX_BUCKET_COUNT` buckets,
    refused before anything is allocated.  On error the payload is left
    unchanged.  Returns warning names; add-on entries currently produce none.
    """
    if not isinstance(payload, dict):
        raise RecordError("bad_payload", f"payload must be a JSON object, got {type(payload).__name__}")
    addons = payload.get("addonHistograms")
    if addons is None:
        return []
    if not isinstance(addons, dict):
        raise RecordError("bad_payload", f"addonHistograms must be an object, got {type(addons).__name__}")
    converted: dict[str, dict[str, list[Any]]] = {}
    for addon_id, entries in addons.items():
        if not isinstance(entries, dict):
            raise RecordError("bad_payload", f"addonHistograms[{addon_id!r}] must be an object of "
                                             f"histograms, got {type(entries).__name__}")
        converted[addon_id] = {name: _addon_array(addon_id, name, entry) for name, entry in entries.items()}
    payload["addonHistograms"] = converted
    return []


def histogram_array(name: str, histogram: Any, index: BucketIndex, *, addon_id: str | None = None,
                    key: str | None = None) -> list[Any]:
    """One histogram as a v2 array: a count for every bucket of ``index``, then the 5 statistics.

    Raises ``RecordError("bad_payload", ...)`` saying which key or value is
    wrong; ``name``, ``addon_id`` and ``key`` (of a keyed histogram) only
    serve to name the histogram in it.
    """
    try:
        # The shapes Firefox sends: exponential histograms carry log_sum and
        # log_sum_squares, the others sum_squares_lo and sum_squares_hi.
        total = histogram["sum"]
        if "log_sum" in histogram:
            first, second = histogram["log_sum"], histogram["log_sum_squares"]
            if "sum_squares_lo" in histogram or "sum_squares_hi" in histogram:
                raise _NotFastPath
            row = [*index.zeros, total, first, second, -1, -1]
        else:
            first, second = histogram["sum_squares_lo"], histogram["sum_squares_hi"]
            if "log_sum_squares" in histogram:
                raise _NotFastPath
            row = [*index.zeros, total, -1, -1, first, second]
        if type(total) not in _STATISTIC_TYPES or type(first) not in _STATISTIC_TYPES \
                or type(second) not in _STATISTIC_TYPES:
            raise _NotFastPath
        position = index.position
        for bucket, count in histogram["values"].items():
            if type(count) is not int or count < 0 or count > MAX_COUNT:
                raise _NotFastPath
            row[position[bucket]] = count
        return row
    except (_NotFastPath, KeyError, TypeError, AttributeError):
        return _checked_array(name, histogram, index, addon_id, key)


def _checked_array(name: str, histogram: Any, index: BucketIndex, addon_id: str | None,
                   key: str | None = None) -> list[Any]:
    """The reference conversion of one histogram, checking everything on the way."""
    def bad(problem: str) -> RecordError:
        if addon_id is not None:
            label = f"addonHistograms[{addon_id!r}][{name!r}]"
        elif key is not None:
            label = f"keyedHistograms[{name!r}][{key!r}]"
        else:
            label = f"histogram {name!r}"
        return RecordError("bad_payload", f"{label}: {problem}")

    if not isinstance(histogram, Mapping):
        raise bad(f"must be an object, got {type(histogram).__name__}")
    if "values" not in histogram:
        raise bad("has no values")
    values = histogram["values"]
    if not isinstance(values, Mapping):
        raise bad(f"values must be an object, got {type(values).__name__}")
    row: list[Any] = list(index.zeros)
    for bucket, count in values.items():
        position = index.position.get(bucket)
        if position is None:
            layout = index.layout
            raise bad(f"bucket key {bucket!r} is not one of the {len(index.bounds)} lower bounds of its "
                      f"{layout.kind} layout ({layout.low}..{layout.high})")
        if type(count) is not int or not 0 <= count <= MAX_COUNT:
            raise bad(f"count {count!r} of bucket {bucket!r} is not a non-negative integer")
        row[position] = count
    for statistic_key in STATISTIC_KEYS:
        statistic = histogram.get(statistic_key, MISSING_STATISTIC)
        if type(statistic) not in _STATISTIC_TYPES:
            raise bad(f"statistic {statistic_key} is {statistic!r}, not a number")
        row.append(statistic)
    return row


def _check_classic(payload: Any) -> None:
    """Raise ``RecordError("bad_payload")`` unless ``payload`` is a classic ver 1 payload with ``info``."""
    if not isinstance(payload, dict):
        raise RecordError("bad_payload", f"payload must be a JSON object, got {type(payload).__name__}")
    if "ver" not in payload:
        raise RecordError("bad_payload", "payload has no ver; only classic ver 1 payloads are converted")
    ver = payload["ver"]
    if type(ver) is int and ver == 2:
        raise RecordError("bad_payload", "payload is already converted (ver 2); store it as it is")
    if type(ver) is not int or ver != 1:
        raise RecordError("bad_payload", f"payload ver is {ver!r}; only classic ver 1 payloads are converted")
    if not isinstance(payload.get("info"), dict):
        raise RecordError("bad_payload", "payload has no info object; a classic payload carries one")


def _spec_index(spec: HistogramSpec, name: str, histogram: Any) -> BucketIndex | None:
    """The index of ``name`` when it is not cached yet: computed, resolved from the
    ping for a C++ constant, ``None`` when unknown, or a :class:`RecordError`."""
    # RecordErrors are raised after the except blocks: raised inside one, the caught
    # error and the new one's frames would form a cycle holding the payload until
    # the cyclic GC runs.
    try:
        return spec.index(name)
    except UnresolvedConstantError:
        problem = None
    except DefinitionError as error:
        problem = f"{error}{_in_revision(spec)}"
    if problem is not None:
        raise RecordError("conversion_error", problem)
    return _index_from_ping(spec, name, histogram)


def _index_from_ping(spec: HistogramSpec, name: str, histogram: Any) -> BucketIndex:
    """Fill the C++ constant of ``name``'s definition from the ping's own fields."""
    if not isinstance(histogram, Mapping):
        raise RecordError("bad_payload", f"histogram {name!r}: must be an object, got {type(histogram).__name__}")
    try:
        index = spec.resolve(name, bucket_count=histogram.get("bucket_count"),
                             value_range=histogram.get("range"),
                             histogram_type=histogram.get("histogram_type"))
    except DefinitionError as error:
        problem = f"{error}{_in_revision(spec)}"
    else:
        problem = None
    if problem is not None:
        raise RecordError("bad_payload", problem)
    assert index is not None, "index() raised for this name, so the spec defines it"
    return index


def _addon_array(addon_id: str, name: str, entry: Any) -> list[Any]:
    try:
        index = addon_histogram_index(name, entry)
    except DefinitionError as error:
        raise RecordError("bad_payload", f"addonHistograms[{addon_id!r}]: {error}") from None
    return histogram_array(name, entry, index, addon_id=addon_id)


def _in_revision(spec: HistogramSpec) -> str:
    return f" (Histograms.json of {spec.revision})" if spec.revision else ""
