"""Bucket bounds: the 2,360 precomputed lists, the worked examples, definition
errors, the safe expression evaluator and the histogram_server format."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from telemetry_core.convert.buckets import (
    MAX_BUCKET_COUNT,
    BucketLayout,
    BucketRangesError,
    DefinitionError,
    ExpressionError,
    UnresolvedConstantError,
    bucket_bounds,
    evaluate_integer,
    parse_bucket_ranges,
    parse_definition,
)
from telemetry_core.errors import TelemetryError
from telemetry_core.convert.spec import HistogramSpec

FIXTURES = Path(__file__).parent / "fixtures"
REVISIONS = {
    "a55c55edf302": "histograms_json__FIREFOX_AURORA_23_BASE__as_a55c55edf302.json",
    "8d3810543edc": "histograms_json__FIREFOX_AURORA_24_BASE__as_8d3810543edc.json",
    "ad0ae007aa9e": "histograms_json__FIREFOX_AURORA_25_BASE__as_ad0ae007aa9e.json",
}
CPP_CONSTANT_DEFINITIONS = {"GC_REASON_2", "STARTUP_MEASUREMENT_ERRORS"}


def load_spec(revision: str) -> HistogramSpec:
    return HistogramSpec.from_json((FIXTURES / REVISIONS[revision]).read_bytes(), revision=revision)


def load_precomputed(revision: str):
    return parse_bucket_ranges((FIXTURES / f"bucket_ranges__{revision}.json").read_bytes())


# --------------------------------------------------------------------------
# The 2,360 precomputed lists
# --------------------------------------------------------------------------

@pytest.mark.parametrize("revision", sorted(REVISIONS))
def test_every_precomputed_bucket_list_matches_the_spec_it_came_from(revision: str) -> None:
    spec = load_spec(revision)
    mismatches = []
    for name, expected in load_precomputed(revision).items():
        layout = spec.layout(name)  # STARTUP_ copies resolve through the STARTUP_ rule
        actual = (layout.histogram_type, layout.low, layout.high, layout.n_buckets, spec.bounds(name))
        wanted = (expected.histogram_type, expected.low, expected.high, expected.bucket_count, expected.bounds)
        if actual != wanted:
            mismatches.append(name)
    assert mismatches == []


def test_the_precomputed_files_hold_2360_lists() -> None:
    assert sum(len(load_precomputed(revision)) for revision in REVISIONS) == 2360


@pytest.mark.parametrize("revision", sorted(REVISIONS))
def test_every_definition_but_the_cpp_constants_is_in_the_precomputed_file(revision: str) -> None:
    spec = load_spec(revision)
    precomputed = load_precomputed(revision)
    assert set(spec) - set(precomputed) == CPP_CONSTANT_DEFINITIONS
    assert set(spec.definition_errors()) == CPP_CONSTANT_DEFINITIONS


# --------------------------------------------------------------------------
# Worked examples (HISTOGRAMS.md §1.6)
# --------------------------------------------------------------------------

WORKED_EXAMPLE_DEFINITIONS = {
    "exponential low=1 high=3000 n_buckets=10": {"kind": "exponential", "low": 1, "high": 3000, "n_buckets": 10},
    "linear low=1 high=100 n_buckets=10": {"kind": "linear", "low": 1, "high": 100, "n_buckets": 10},
    "enumerated n_values=11": {"kind": "enumerated", "n_values": 11},
    "boolean": {"kind": "boolean"},
    "flag": {"kind": "flag"},
    "count": {"kind": "count"},
    "exponential low=1 high=10000 n_buckets=50": {"kind": "exponential", "high": "10000", "n_buckets": 50},
    "exponential low=50 high=1000 n_buckets=10": {"kind": "exponential", "low": 50, "high": 1000, "n_buckets": 10},
    "exponential low=1 high=5 n_buckets=10 (narrow)": {"kind": "exponential", "low": 1, "high": 5, "n_buckets": 10},
    "linear low=10 high=500 n_buckets=30": {"kind": "linear", "low": 10, "high": 500, "n_buckets": 30},
    "linear high='80 * 25' n_buckets='80 + 1'": {"kind": "linear", "high": "80 * 25", "n_buckets": "80 + 1"},
    "exponential low=2 high=65536 n_buckets=20 (pdf.js size)": {"kind": "exponential", "low": 2, "high": 65536,
                                                                "n_buckets": 20},
}
INVALID_ON_CLIENT = "linear low=0 high=100 n_buckets=10 (invalid on client)"


def worked_examples() -> dict[str, list[int]]:
    return json.loads((FIXTURES / "derived__bucket_examples_computed.json").read_text())


def test_the_worked_example_table_covers_the_fixture() -> None:
    assert set(worked_examples()) == set(WORKED_EXAMPLE_DEFINITIONS) | {INVALID_ON_CLIENT}


@pytest.mark.parametrize("description", sorted(WORKED_EXAMPLE_DEFINITIONS))
def test_worked_example(description: str) -> None:
    definition = {"description": description, **WORKED_EXAMPLE_DEFINITIONS[description]}
    layout = parse_definition("EXAMPLE", definition)
    assert list(layout.bounds()) == worked_examples()[description]


def test_linear_low_zero_gives_the_original_duplicate_zero_but_is_refused_as_a_definition() -> None:
    assert list(bucket_bounds("linear", 0, 100, 10)) == worked_examples()[INVALID_ON_CLIENT]
    with pytest.raises(DefinitionError, match=r"'EXAMPLE' \(linear\): low is 0; it must be at least 1"):
        parse_definition("EXAMPLE", {"kind": "linear", "description": "", "low": 0, "high": 100, "n_buckets": 10})


def test_linear_rounds_half_up_not_to_even() -> None:
    # i = 5 computes exactly 50.5; Python 3's round() would give 50.
    assert bucket_bounds("linear", 1, 100, 10)[5] == 51


def test_exponential_overshoots_high_with_narrow_buckets() -> None:
    bounds = bucket_bounds("exponential", 1, 5, 10)
    assert bounds[-1] == 9 > 5
    assert all(b - a == 1 for a, b in zip(bounds[1:], bounds[2:]))


@pytest.mark.parametrize("kind, low, n_buckets, message", [
    ("exponential", 0, 10, "low >= 1"),
    ("linear", 1, 2, "between 3 and"),
    ("linear", 1, MAX_BUCKET_COUNT + 1, "between 3 and"),
    ("bogus", 1, 10, "unknown histogram kind"),
])
def test_bucket_bounds_refuses_impossible_layouts(kind: str, low: int, n_buckets: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bucket_bounds(kind, low, 100, n_buckets)


# --------------------------------------------------------------------------
# Definition errors
# --------------------------------------------------------------------------

def test_a_cpp_constant_is_a_named_unresolved_constant_error() -> None:
    with pytest.raises(UnresolvedConstantError) as caught:
        parse_definition("GC_REASON_2", {"kind": "enumerated", "description": "",
                                         "n_values": "JS::gcreason::NUM_TELEMETRY_REASONS"})
    error = caught.value
    assert isinstance(error, DefinitionError) and isinstance(error, TelemetryError)
    assert (error.name, error.kind, error.parameter, error.constant) == (
        "GC_REASON_2", "enumerated", "n_values", "JS::gcreason::NUM_TELEMETRY_REASONS")
    assert "GC_REASON_2" in str(error) and "C++ constant" in str(error)


def test_a_cpp_constant_keeps_the_parameters_that_did_evaluate() -> None:
    with pytest.raises(UnresolvedConstantError) as caught:
        parse_definition("X", {"kind": "exponential", "description": "", "low": "10 * 1000",
                               "high": "MAX_SOMETHING", "n_buckets": 20})
    assert caught.value.parameter == "high"
    assert caught.value.known == {"low": 10000, "n_buckets": 20}


@pytest.mark.parametrize("definition, message", [
    ({"description": "", "high": 10, "n_buckets": 5}, "'X': required key 'kind' is missing"),
    ({"kind": "exponental", "description": ""}, "'X': unknown kind 'exponental'"),
    ({"kind": ["linear"], "description": ""}, "'X': unknown kind"),
    ({"kind": "flag"}, "'X': required key 'description' is missing"),
    ({"kind": "linear", "description": "", "n_buckets": 5}, "'X': required key 'high' is missing"),
    ({"kind": "exponential", "description": "", "high": 5}, "'X': required key 'n_buckets' is missing"),
    ({"kind": "enumerated", "description": ""}, "'X': required key 'n_values' is missing"),
    ({"kind": "linear", "description": "", "high": 10, "n_buckets": 5, "n_values": 3},
     "'X': key 'n_values' is not allowed for kind 'linear'"),
    ({"kind": "linear", "description": "", "high": 10, "n_buckets": 5, "extended_statistics_ok": True},
     "'X': key 'extended_statistics_ok' is not allowed for kind 'linear'"),
    ({"kind": "boolean", "description": "", "high": 10}, "'X': key 'high' is not allowed for kind 'boolean'"),
    ({"kind": "exponential", "description": "", "low": 0, "high": 10, "n_buckets": 5},
     "low is 0; it must be at least 1"),
    ({"kind": "linear", "description": "", "low": "-5", "high": 10, "n_buckets": 5},
     "low is -5; it must be at least 1"),
    ({"kind": "linear", "description": "", "low": 10, "high": 10, "n_buckets": 5},
     "high \\(10\\) must be greater than low"),
    ({"kind": "linear", "description": "", "high": 10, "n_buckets": 2}, "n_buckets is 2; it must be between 3"),
    ({"kind": "linear", "description": "", "high": 10**6, "n_buckets": MAX_BUCKET_COUNT + 1}, "n_buckets is 10001"),
    ({"kind": "linear", "description": "", "high": 2**31, "n_buckets": 10}, "exceeds the 32-bit limit"),
    ({"kind": "enumerated", "description": "", "n_values": 1}, "n_values is 1; it must be at least 2"),
    ({"kind": "linear", "description": "", "high": 10.0, "n_buckets": 5}, "high must be an integer .* got float"),
    ({"kind": "linear", "description": "", "high": True, "n_buckets": 5}, "high must be an integer .* got bool"),
    ({"kind": "linear", "description": "", "high": "10 / 2", "n_buckets": 5}, "high .* operator / is not supported"),
    ({"kind": "linear", "description": "", "high": "NUM + 1", "n_buckets": 5}, "high .* name 'NUM' is not a number"),
])
def test_named_definition_errors(definition: dict, message: str) -> None:
    with pytest.raises(DefinitionError, match=message) as caught:
        parse_definition("X", definition)
    assert not isinstance(caught.value, UnresolvedConstantError)
    assert "\n" not in str(caught.value)


def test_a_definition_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(DefinitionError, match="'X': definition must be an object, got list"):
        parse_definition("X", ["linear"])  # type: ignore[arg-type]


def test_later_keys_without_bucket_effect_are_accepted() -> None:
    definition = {"kind": "exponential", "description": "", "high": "10000", "n_buckets": 50,
                  "extended_statistics_ok": True, "expires_in_version": "never", "keyed": True,
                  "alert_emails": ["a@example.com"], "releaseChannelCollection": "opt-out",
                  "bug_numbers": [1], "cpp_guard": "XP_WIN"}
    assert parse_definition("X", definition) == BucketLayout("exponential", 1, 10000, 50)


# --------------------------------------------------------------------------
# The safe evaluator
# --------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("10000", 10000), (" 10 * 1000 ", 10000), ("80 + 1", 81), ("16 * 1024 * 1024", 16777216),
    ("(2 + 3) * 4", 20), ("7 // 2", 3), ("-5 + 10", 5), ("+3", 3), ("1_000", 1000),
    ("(" * 40 + "1" + ")" * 40, 1),
])
def test_evaluator_reads_2013_expressions(text: str, value: int) -> None:
    assert evaluate_integer(text) == value


@pytest.mark.parametrize("text, message", [
    ("__import__('os')", "Call is not allowed"),
    ("__import__('os').system('true')", "Call is not allowed"),
    ("().__class__", "Attribute is not allowed"),
    ("(1).real", "Attribute is not allowed"),
    ("[1][0]", "Subscript is not allowed"),
    ("lambda: 1", "Lambda is not allowed"),
    ("x", "name 'x' is not a number"),
    ("2 ** 10", r"operator \*\* is not supported"),
    ("9 ** 9 ** 9 ** 9", r"operator \*\* is not supported"),
    ("1 << 4000", "operator << is not supported"),
    ("10 / 2", "operator / is not supported"),
    ("10 % 3", "operator % is not supported"),
    ("~1", "unary operator Invert is not supported"),
    ("1 // 0", "division by zero"),
    ("9" * 30, "exceeds the 64-bit range"),
    ("4294967296 * 4294967296", "exceeds the 64-bit range"),
    ("1.5", "1.5 is not an integer"),
    ("True", "True is not an integer"),
    ("'10'", "'10' is not an integer"),
    ("1 if 1 else 2", "IfExp is not allowed"),
    ("1 < 2", "Compare is not allowed"),
    ("", "empty expression"),
    ("   ", "empty expression"),
    ("(" * 1000 + "1" + ")" * 1000, "2001 characters long; at most 100"),
    ("1" * 101, "101 characters long"),
    ("10 *", "is not an integer expression"),
    ("1\x00", "is not an integer expression"),
    ("JS::gcreason::NUM_TELEMETRY_REASONS", "is not an integer expression"),
])
def test_evaluator_refuses_anything_else_with_a_clear_one_line_error(text: str, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ExpressionError, match=message) as caught:
        evaluate_integer(text)
    assert time.perf_counter() - started < 1.0, "refusal must not compute anything large"
    assert "\n" not in str(caught.value)


def test_evaluator_wants_a_string() -> None:
    with pytest.raises(ExpressionError, match="must be a string, got int"):
        evaluate_integer(10)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# histogram_server's /histogram_buckets format
# --------------------------------------------------------------------------

@pytest.mark.parametrize("fixture, message", [
    ("bucket_ranges_bad__invalid_json.json", "json parse failed"),
    ("bucket_ranges_bad__invalid_schema.json", "histograms element must be an object"),
    ("bucket_ranges_bad__missing_kind.json", "Key: 'MY_HISTOGRAM' missing kind element"),
    ("bucket_ranges_bad__invalid_kind.json", "Key: 'MY_HISTOGRAM' has bad kind 'bogus'"),
])
def test_bad_bucket_range_documents(fixture: str, message: str) -> None:
    with pytest.raises(BucketRangesError, match=message) as caught:
        parse_bucket_ranges((FIXTURES / fixture).read_bytes())
    assert isinstance(caught.value, DefinitionError)


@pytest.mark.parametrize("entry, message", [
    ({"kind": "0", "min": 1, "max": 10, "bucket_count": 3}, "missing buckets element"),
    ({"kind": "5", "min": 1, "max": 10, "bucket_count": 3, "buckets": [0, 1, 10]}, "bad kind '5'"),
    ({"kind": 0, "min": 1, "max": 10, "bucket_count": 3, "buckets": [0, 1, 10]}, "bad kind 0"),
    ({"kind": "0", "min": "1", "max": 10, "bucket_count": 3, "buckets": [0, 1, 10]}, "must be integers"),
    ({"kind": "0", "min": 1, "max": 10, "bucket_count": 3, "buckets": [0, "1", 10]}, "list of integers"),
    ({"kind": "0", "min": 1, "max": 10, "bucket_count": 4, "buckets": [0, 1, 10]}, "3 buckets but bucket_count 4"),
    ([1], "must be an object"),
])
def test_malformed_bucket_range_entries(entry: object, message: str) -> None:
    with pytest.raises(BucketRangesError, match=message):
        parse_bucket_ranges(json.dumps({"histograms": {"H": entry}}))


def test_a_good_bucket_range_entry() -> None:
    parsed = parse_bucket_ranges('{"histograms": {"H": {"kind": "1", "min": 1, "max": 2, '
                                 '"bucket_count": 3, "buckets": [0, 1, 2]}}}')
    assert parsed["H"].histogram_type == 1 and parsed["H"].bounds == (0, 1, 2) and parsed["H"].bucket_count == 3
