"""Bucket lower bounds of Firefox histograms, exactly as the 2013 tools computed them.

Three jobs, all pure functions (see ``docs/convert.md``, bucket rules):

* :func:`evaluate_integer` reads the 2013 numeric strings and expressions
  (``"10000"``, ``"10 * 1000"``, ``"80 + 1"``) with a tiny whitelist
  evaluator -- never ``eval``.
* :func:`parse_definition` turns one ``Histograms.json`` entry into a
  :class:`BucketLayout` (kind, low, high, n_buckets), and
  :func:`bucket_bounds` turns a layout into its list of lower bounds.
* :func:`parse_bucket_ranges` reads the precomputed ``/histogram_buckets``
  answer of the original ``histogram_server.py``.

Every problem with a definition raises :class:`DefinitionError` (or a
subclass) with a one-line message naming the histogram.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import orjson

from ..errors import TelemetryError

#: histogram_type code sent in pings (and used as "kind" by histogram_server) per kind.
HISTOGRAM_TYPE_BY_KIND: dict[str, int] = {
    "exponential": 0,
    "linear": 1,
    "enumerated": 1,
    "boolean": 2,
    "flag": 3,
    "count": 4,
}
#: The kind whose bucket rule a histogram_type code stands for.
KIND_BY_HISTOGRAM_TYPE: dict[int, str] = {0: "exponential", 1: "linear", 2: "boolean", 3: "flag", 4: "count"}

#: Most buckets a layout may have: ten times the largest 2013 definition (1000).
#: It keeps a hostile add-on entry from allocating gigabytes.
MAX_BUCKET_COUNT = 10_000
#: Largest histogram bound: Gecko stores samples as 32-bit signed ints.
MAX_BOUND = 2**31 - 1
#: Longest expression string :func:`evaluate_integer` reads; 2013 specs use at most 16.
MAX_EXPRESSION_LENGTH = 100
#: Largest magnitude of any intermediate value in an expression.
MAX_EXPRESSION_VALUE = 2**63 - 1

_ALWAYS_ALLOWED_KEYS = frozenset({
    "kind", "description", "cpp_guard", "keyed", "expires_in_version",
    "alert_emails", "releaseChannelCollection", "bug_numbers",
})
_RANGE_KEYS = frozenset({"low", "high", "n_buckets"})
ALLOWED_KEYS_BY_KIND: dict[str, frozenset[str]] = {
    "boolean": _ALWAYS_ALLOWED_KEYS,
    "flag": _ALWAYS_ALLOWED_KEYS,
    "count": _ALWAYS_ALLOWED_KEYS,
    "enumerated": _ALWAYS_ALLOWED_KEYS | {"n_values"},
    "linear": _ALWAYS_ALLOWED_KEYS | _RANGE_KEYS,
    "exponential": _ALWAYS_ALLOWED_KEYS | _RANGE_KEYS | {"extended_statistics_ok"},
}
_NUMERIC_KEYS_BY_KIND: dict[str, tuple[str, ...]] = {
    "enumerated": ("n_values",),
    "linear": ("low", "high", "n_buckets"),
    "exponential": ("low", "high", "n_buckets"),
}
_REQUIRED_KEYS_BY_KIND: dict[str, tuple[str, ...]] = {
    "enumerated": ("n_values",),
    "linear": ("high", "n_buckets"),
    "exponential": ("high", "n_buckets"),
}

# A C++ identifier such as JS::gcreason::NUM_TELEMETRY_REASONS or MAX_EVENT_ID.
_CPP_CONSTANT = re.compile(r"[A-Za-z_]\w*(?:::[A-Za-z_]\w*)*\Z")


class DefinitionError(TelemetryError):
    """A histogram definition (or a precomputed bucket list) cannot give bucket bounds."""


class ExpressionError(DefinitionError):
    """A numeric string in a definition is not a supported integer expression."""


class UnresolvedConstantError(DefinitionError):
    """A definition uses a C++ constant, which only the client knows.

    ``kind`` is the definition's kind, ``parameter`` the key holding the
    constant (``n_values``, ``low``, ``high`` or ``n_buckets``), ``constant``
    its text, and ``known`` the parameters that did evaluate (by key).  A
    ping's own ``bucket_count``/``range`` can fill in the missing value.
    """

    def __init__(self, message: str, *, name: str, kind: str, parameter: str, constant: str,
                 known: Mapping[str, int]) -> None:
        super().__init__(message)
        self.name = name
        self.kind = kind
        self.parameter = parameter
        self.constant = constant
        self.known = dict(known)


class BucketRangesError(DefinitionError):
    """A precomputed ``/histogram_buckets`` document is malformed."""


@dataclass(frozen=True, slots=True)
class BucketLayout:
    """What bucket bounds depend on: the bucket rule and (low, high, n_buckets).

    ``kind`` is one of :data:`HISTOGRAM_TYPE_BY_KIND`; boolean, flag and count
    are always (1, 2, 3) and enumerated is (1, n_values, n_values + 1).
    """

    kind: str
    low: int
    high: int
    n_buckets: int

    @property
    def histogram_type(self) -> int:
        """The ``histogram_type`` code a ping reports for this layout."""
        return HISTOGRAM_TYPE_BY_KIND[self.kind]

    def bounds(self) -> tuple[int, ...]:
        """The lower bounds of the buckets (see :func:`bucket_bounds`)."""
        return bucket_bounds(self.kind, self.low, self.high, self.n_buckets)


# --------------------------------------------------------------------------
# The safe evaluator
# --------------------------------------------------------------------------

_BINARY_OPERATORS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.FloorDiv: lambda a, b: a // b,
}
_UNARY_OPERATORS = {ast.UAdd: lambda a: a, ast.USub: lambda a: -a}
_OPERATOR_SYMBOLS = {ast.Pow: "**", ast.Div: "/", ast.Mod: "%", ast.LShift: "<<", ast.RShift: ">>",
                     ast.BitOr: "|", ast.BitAnd: "&", ast.BitXor: "^", ast.MatMult: "@"}


def evaluate_integer(text: str) -> int:
    """Evaluate an integer expression such as ``"16 * 1024 * 1024"`` or ``"80 + 1"``.

    Only integer literals, ``+ - * //``, unary ``+``/``-`` and parentheses
    are accepted; the text is at most :data:`MAX_EXPRESSION_LENGTH`
    characters and no value may exceed :data:`MAX_EXPRESSION_VALUE` in
    magnitude.  Raises :class:`ExpressionError` for anything else.
    """
    if not isinstance(text, str):
        raise ExpressionError(f"expression must be a string, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise ExpressionError("empty expression; write an integer such as 1000")
    if len(stripped) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"expression is {len(stripped)} characters long; "
                              f"at most {MAX_EXPRESSION_LENGTH} are accepted")
    try:
        tree = ast.parse(stripped, mode="eval")
    except (SyntaxError, ValueError) as error:  # ValueError: e.g. null bytes on some versions
        reason = error.msg if isinstance(error, SyntaxError) else str(error)
        raise ExpressionError(f"{stripped!r} is not an integer expression ({reason})") from None
    return _evaluate_node(tree.body, stripped)


def _evaluate_node(node: ast.AST, text: str) -> int:
    if isinstance(node, ast.Constant):
        value = node.value
        if type(value) is not int:
            raise ExpressionError(f"{text!r}: {value!r} is not an integer")
        return _checked(value, text)
    if isinstance(node, ast.BinOp):
        operation = _BINARY_OPERATORS.get(type(node.op))
        if operation is None:
            raise ExpressionError(f"{text!r}: operator {_OPERATOR_SYMBOLS.get(type(node.op), '?')} "
                                  "is not supported; use + - * // and parentheses")
        left = _evaluate_node(node.left, text)
        right = _evaluate_node(node.right, text)
        if isinstance(node.op, ast.FloorDiv) and right == 0:
            raise ExpressionError(f"{text!r}: division by zero")
        return _checked(operation(left, right), text)
    if isinstance(node, ast.UnaryOp):
        unary = _UNARY_OPERATORS.get(type(node.op))
        if unary is None:
            raise ExpressionError(f"{text!r}: unary operator {type(node.op).__name__} is not supported")
        return _checked(unary(_evaluate_node(node.operand, text)), text)
    if isinstance(node, ast.Name):
        raise ExpressionError(f"{text!r}: name {node.id!r} is not a number")
    raise ExpressionError(f"{text!r}: {type(node).__name__} is not allowed; "
                          "only integers, + - * // and parentheses are")


def _checked(value: int, text: str) -> int:
    if -MAX_EXPRESSION_VALUE <= value <= MAX_EXPRESSION_VALUE:
        return value
    raise ExpressionError(f"{text!r}: a value exceeds the 64-bit range")


# --------------------------------------------------------------------------
# Definitions -> layouts
# --------------------------------------------------------------------------

def parse_definition(name: str, definition: Mapping[str, Any]) -> BucketLayout:
    """The bucket layout of one ``Histograms.json`` entry (HISTOGRAMS.md §1.1-1.2).

    Numbers may be ints or integer expressions in strings.  Raises
    :class:`UnresolvedConstantError` when a parameter is a C++ constant and
    :class:`DefinitionError` for a missing or unexpected key, an unknown
    kind, a non-integer parameter, or a layout Gecko would refuse
    (low < 1, low >= high, n_buckets < 3 or more than
    :data:`MAX_BUCKET_COUNT`).
    """
    if not isinstance(definition, Mapping):
        raise DefinitionError(f"histogram {name!r}: definition must be an object, "
                              f"got {type(definition).__name__}")
    kind = _definition_kind(name, definition)
    _check_keys(name, kind, definition)
    parameters, unresolved = _evaluate_parameters(name, kind, definition)
    if unresolved is not None:
        key, constant = unresolved
        raise UnresolvedConstantError(
            f"histogram {name!r}: {key} is the C++ constant {constant!r}, which Histograms.json "
            "cannot resolve; take it from the ping's bucket_count/range or replace it with a number",
            name=name, kind=kind, parameter=key, constant=constant, known=parameters)
    layout = layout_from_parameters(kind, parameters)
    check_layout(name, layout)
    return layout


def _definition_kind(name: str, definition: Mapping[str, Any]) -> str:
    if "kind" not in definition:
        raise DefinitionError(f"histogram {name!r}: required key 'kind' is missing")
    kind = definition["kind"]
    if not isinstance(kind, str) or kind not in ALLOWED_KEYS_BY_KIND:
        raise DefinitionError(f"histogram {name!r}: unknown kind {kind!r}; "
                              f"expected one of {', '.join(ALLOWED_KEYS_BY_KIND)}")
    return kind


def _check_keys(name: str, kind: str, definition: Mapping[str, Any]) -> None:
    unexpected = sorted(set(definition) - ALLOWED_KEYS_BY_KIND[kind])
    if unexpected:
        raise DefinitionError(f"histogram {name!r}: key {unexpected[0]!r} is not allowed "
                              f"for kind {kind!r}")
    for key in ("description", *_REQUIRED_KEYS_BY_KIND.get(kind, ())):
        if key not in definition:
            raise DefinitionError(f"histogram {name!r}: required key {key!r} is missing "
                                  f"for kind {kind!r}")


def _evaluate_parameters(name: str, kind: str, definition: Mapping[str, Any],
                         ) -> tuple[dict[str, int], tuple[str, str] | None]:
    """Evaluate the numeric keys; returns them and the first (key, C++ constant) if any."""
    parameters: dict[str, int] = {}
    unresolved: tuple[str, str] | None = None
    for key in _NUMERIC_KEYS_BY_KIND.get(kind, ()):
        if key not in definition:
            continue  # only "low" may be absent here; it defaults to 1
        raw = definition[key]
        if isinstance(raw, str) and _CPP_CONSTANT.match(raw.strip()):
            unresolved = unresolved or (key, raw.strip())
            continue
        parameters[key] = definition_integer(name, key, raw)
    return parameters, unresolved


def definition_integer(name: str, key: str, raw: Any) -> int:
    """One numeric parameter of histogram ``name`` as an int (int or expression string)."""
    if type(raw) is int:
        return raw
    if isinstance(raw, str):
        try:
            return evaluate_integer(raw)
        except ExpressionError as error:
            raise DefinitionError(f"histogram {name!r}: {key} {error}") from None
    raise DefinitionError(f"histogram {name!r}: {key} must be an integer or an integer "
                          f"expression string, got {type(raw).__name__} {raw!r}")


def layout_from_parameters(kind: str, parameters: Mapping[str, int]) -> BucketLayout:
    """The layout of ``kind`` given its evaluated keys (§1.1; ``low`` defaults to 1)."""
    if kind in ("boolean", "flag", "count"):
        return BucketLayout(kind, 1, 2, 3)
    if kind == "enumerated":
        n_values = parameters["n_values"]
        return BucketLayout(kind, 1, n_values, n_values + 1)
    return BucketLayout(kind, parameters.get("low", 1), parameters["high"], parameters["n_buckets"])


def check_layout(name: str, layout: BucketLayout) -> None:
    """Raise :class:`DefinitionError` unless Gecko would accept ``layout`` (§1.4).

    Linear and exponential histograms need 1 <= low < high <= :data:`MAX_BOUND`
    and 3 <= n_buckets <= :data:`MAX_BUCKET_COUNT`; enumerated needs
    n_values >= 2.
    """
    prefix = f"histogram {name!r} ({layout.kind})"
    if layout.kind == "enumerated" and layout.high < 2:
        raise DefinitionError(f"{prefix}: n_values is {layout.high}; it must be at least 2")
    if layout.low < 1:
        raise DefinitionError(f"{prefix}: low is {layout.low}; it must be at least 1")
    if layout.high <= layout.low:
        raise DefinitionError(f"{prefix}: high ({layout.high}) must be greater than low ({layout.low})")
    if layout.high > MAX_BOUND:
        raise DefinitionError(f"{prefix}: high ({layout.high}) exceeds the 32-bit limit {MAX_BOUND}")
    if not 3 <= layout.n_buckets <= MAX_BUCKET_COUNT:
        raise DefinitionError(f"{prefix}: n_buckets is {layout.n_buckets}; "
                              f"it must be between 3 and {MAX_BUCKET_COUNT}")


# --------------------------------------------------------------------------
# Layouts -> bounds
# --------------------------------------------------------------------------

def bucket_bounds(kind: str, low: int, high: int, n_buckets: int) -> tuple[int, ...]:
    """The ``n_buckets`` lower bounds of a histogram, entry 0 being the underflow 0.

    ``exponential`` uses the exponential rule (§1.4, with width-1 "narrow"
    buckets and possible overshoot past ``high``); every other kind uses the
    linear rule (§1.3, round-half-up in doubles).  Pass the (low, high,
    n_buckets) of §1.1, e.g. (1, n_values, n_values + 1) for enumerated.
    Raises ``ValueError`` for an unknown kind, n_buckets outside
    3..:data:`MAX_BUCKET_COUNT`, or an exponential low below 1; the linear
    rule accepts low = 0 as the original tool did.
    """
    if kind not in HISTOGRAM_TYPE_BY_KIND:
        raise ValueError(f"unknown histogram kind {kind!r}")
    if not 3 <= n_buckets <= MAX_BUCKET_COUNT:
        raise ValueError(f"n_buckets must be between 3 and {MAX_BUCKET_COUNT}, got {n_buckets}")
    if kind == "exponential":
        if low < 1:
            raise ValueError(f"exponential histograms need low >= 1, got {low}")
        return _exponential_bounds(low, high, n_buckets)
    if low < 0:
        raise ValueError(f"linear histograms need low >= 0, got {low}")
    return _linear_bounds(low, high, n_buckets)


def _linear_bounds(low: int, high: int, n_buckets: int) -> tuple[int, ...]:
    low_f, high_f, span = float(low), float(high), n_buckets - 2
    bounds = [0] * n_buckets
    for i in range(1, n_buckets):
        value = (low_f * (n_buckets - 1 - i) + high_f * (i - 1)) / span
        bounds[i] = int(value + 0.5)  # round half up by truncation, as the C++ does
    return tuple(bounds)


def _exponential_bounds(low: int, high: int, n_buckets: int) -> tuple[int, ...]:
    log_high = math.log(high)
    bounds = [0] * n_buckets
    current = low
    bounds[1] = current
    for i in range(2, n_buckets):
        log_current = math.log(current)
        candidate = int(math.floor(math.exp(log_current + (log_high - log_current) / (n_buckets - i)) + 0.5))
        current = candidate if candidate > current else current + 1
        bounds[i] = current
    return tuple(bounds)


# --------------------------------------------------------------------------
# Precomputed bucket lists (histogram_server.py's /histogram_buckets answer)
# --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PrecomputedHistogram:
    """One entry of a ``/histogram_buckets`` answer: the histogram_type code
    (``kind``), ``min``/``max`` and the bucket lower bounds."""

    histogram_type: int
    low: int
    high: int
    bounds: tuple[int, ...]

    @property
    def bucket_count(self) -> int:
        return len(self.bounds)


def parse_bucket_ranges(document: bytes | str) -> dict[str, PrecomputedHistogram]:
    """Parse ``{"histograms": {NAME: {kind, min, max, bucket_count, buckets}}}``.

    ``kind`` is a histogram_type code as a string (``"0"`` .. ``"4"``).
    Raises :class:`BucketRangesError` naming the first problem: unparsable
    JSON, a missing or non-object ``histograms`` element, a missing or
    malformed key of an entry, or buckets that disagree with bucket_count.
    """
    try:
        parsed = orjson.loads(document)
    except orjson.JSONDecodeError as error:
        raise BucketRangesError(f"bucket ranges: json parse failed ({error})") from None
    histograms = parsed.get("histograms") if isinstance(parsed, dict) else None
    if not isinstance(histograms, dict):
        raise BucketRangesError("bucket ranges: histograms element must be an object "
                                "mapping histogram names to bucket lists")
    return {name: _precomputed_entry(name, entry) for name, entry in histograms.items()}


_HISTOGRAM_TYPE_STRINGS = {str(code): code for code in KIND_BY_HISTOGRAM_TYPE}


def _precomputed_entry(name: str, entry: Any) -> PrecomputedHistogram:
    if not isinstance(entry, dict):
        raise BucketRangesError(f"bucket ranges: Key: {name!r} must be an object")
    if "kind" not in entry:
        raise BucketRangesError(f"bucket ranges: Key: {name!r} missing kind element")
    kind = entry["kind"]
    if not isinstance(kind, str) or kind not in _HISTOGRAM_TYPE_STRINGS:
        raise BucketRangesError(f"bucket ranges: Key: {name!r} has bad kind {kind!r}; "
                                "expected a histogram_type code \"0\" to \"4\"")
    for key in ("min", "max", "bucket_count", "buckets"):
        if key not in entry:
            raise BucketRangesError(f"bucket ranges: Key: {name!r} missing {key} element")
    numbers = [entry["min"], entry["max"], entry["bucket_count"]]
    buckets = entry["buckets"]
    if not all(type(number) is int for number in numbers):
        raise BucketRangesError(f"bucket ranges: Key: {name!r} min, max and bucket_count must be integers")
    if not isinstance(buckets, list) or not all(type(bound) is int for bound in buckets):
        raise BucketRangesError(f"bucket ranges: Key: {name!r} buckets must be a list of integers")
    if len(buckets) != entry["bucket_count"]:
        raise BucketRangesError(f"bucket ranges: Key: {name!r} has {len(buckets)} buckets "
                                f"but bucket_count {entry['bucket_count']}")
    return PrecomputedHistogram(_HISTOGRAM_TYPE_STRINGS[kind], entry["min"], entry["max"], tuple(buckets))
