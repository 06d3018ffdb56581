"""v1 -> v2 conversion: conformance with the original converter on the
fixture ping, the STARTUP_ rule, C++ constants, every rejection category,
add-on histograms and hostile payloads."""

from __future__ import annotations

import copy
import gzip
import json
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest

from telemetry_core.convert.buckets import MAX_BUCKET_COUNT, UnresolvedConstantError, bucket_bounds
from telemetry_core.convert.conversion import (
    UNKNOWN_HISTOGRAM,
    WARNINGS,
    convert_addon_histograms,
    convert_payload,
)
from telemetry_core.errors import RECORD_ERROR_CATEGORIES, RecordError
from telemetry_core.convert.spec import HistogramSpec, addon_histogram_index, record_bounds
from telemetry_core.store.spool.files import SpoolReader

FIXTURES = Path(__file__).parent / "fixtures"
AURORA_23 = FIXTURES / "histograms_json__FIREFOX_AURORA_23_BASE__as_a55c55edf302.json"
FIXTURE_REVISION = "http://hg.mozilla.org/releases/mozilla-release/rev/a55c55edf302"


@pytest.fixture(autouse=True, params=["compiled", "python"])
def implementation(request, monkeypatch) -> str:
    """Every test here runs with the compiled fast path and with pure Python."""
    if request.param == "python":
        monkeypatch.setattr("telemetry_core.convert.conversion._compiled_histograms", None)
    return request.param


@pytest.fixture(scope="module")
def aurora_23() -> HistogramSpec:
    return HistogramSpec.from_json(AURORA_23.read_bytes(), revision=FIXTURE_REVISION)


@pytest.fixture()
def fixture_ping() -> dict[str, Any]:
    """The one v1 record of telemetry1.log, read with the spool reader (nodejs-v1 framing)."""
    records = SpoolReader(FIXTURES / "payload_v1_packed_log__telemetry1.log").read_all()
    assert len(records) == 1 and records[0].timestamp_ms == 1378822911255
    return orjson.loads(gzip.decompress(records[0].body))


@pytest.fixture(scope="module")
def oracle() -> dict[str, Any]:
    return json.loads((FIXTURES / "expected_v2__telemetry1_converted_by_original_convert_py.json").read_text())


def spec_of(**definitions: dict[str, Any]) -> HistogramSpec:
    return HistogramSpec({name: {"description": "", **d} for name, d in definitions.items()})


def ping(histograms: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"ver": 1, "info": {"revision": FIXTURE_REVISION}, "histograms": histograms, **extra}


def exponential_entry(values: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    entry = {"range": [1, 3000], "bucket_count": 10, "histogram_type": 0, "values": values,
             "sum": 30, "log_sum": 2.5, "log_sum_squares": 4.25}
    entry.update(overrides)
    return entry


def linear_entry(values: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    entry = {"range": [1, 100], "bucket_count": 10, "histogram_type": 1, "values": values,
             "sum": 40, "sum_squares_lo": 1600, "sum_squares_hi": 0}
    entry.update(overrides)
    return entry


EXP_3000 = {"kind": "exponential", "high": 3000, "n_buckets": 10}   # [0,1,3,8,21,57,154,414,1114,3000]
LIN_100 = {"kind": "linear", "high": 100, "n_buckets": 10}          # [0,1,13,26,38,51,63,75,88,100]


def rejected(payload: Any, spec: HistogramSpec, category: str, match: str) -> RecordError:
    """Convert, expect ``category``; the payload must be left as it was."""
    before = copy.deepcopy(payload)
    with pytest.raises(RecordError, match=match) as caught:
        convert_payload(payload, spec)
    assert caught.value.category == category
    assert category in RECORD_ERROR_CATEGORIES
    assert payload == before
    return caught.value


# --------------------------------------------------------------------------
# Conformance with the original convert.py (HISTOGRAMS.md §3)
# --------------------------------------------------------------------------

def test_the_fixture_ping_converts_to_the_original_output(fixture_ping, oracle, aurora_23) -> None:
    warnings = convert_payload(fixture_ping, aurora_23)

    converted, expected = fixture_ping["histograms"], oracle["histograms"]
    assert set(converted) == set(expected)
    differing = sorted(name for name in expected if converted[name] != expected[name])
    assert differing == ["GC_REASON_2"]
    assert {key: value for key, value in fixture_ping.items() if key != "histograms"} == \
        {key: value for key, value in oracle.items() if key != "histograms"}
    assert fixture_ping["ver"] == 2
    # AURORA_23_BASE lacks these two; the original dropped them too.
    assert warnings == [UNKNOWN_HISTOGRAM, UNKNOWN_HISTOGRAM]
    assert {"MIXED_CONTENT_PAGE_LOAD", "HTTP_OFFLINE_CACHE_DOCUMENT_LOAD"}.isdisjoint(converted)


def test_gc_reason_2_is_exactly_one_bucket_shorter_than_the_original(fixture_ping, oracle, aurora_23) -> None:
    """GC_REASON_2's n_values is the C++ constant JS::gcreason::NUM_TELEMETRY_REASONS.

    The original server textually replaced it with 101 (bug 920169), giving
    102 buckets; Firefox 23 itself had the constant at 100 and says so in the
    ping (bucket_count 101, range [1, 100]).  We take it from the ping, so our
    array has 101 buckets: the original's last bucket (lower bound 101, which
    no Firefox 23 sample can reach and which is 0) is the only difference.
    """
    sent = fixture_ping["histograms"]["GC_REASON_2"]
    assert (sent["bucket_count"], sent["range"], sent["histogram_type"]) == (101, [1, 100], 1)

    convert_payload(fixture_ping, aurora_23)
    ours, theirs = fixture_ping["histograms"]["GC_REASON_2"], oracle["histograms"]["GC_REASON_2"]

    assert len(ours) == 101 + 5 and len(theirs) == 102 + 5
    assert theirs[101] == 0
    assert ours == theirs[:101] + theirs[102:]


def test_startup_copies_keep_their_key(fixture_ping, aurora_23) -> None:
    startup_names = {name for name in fixture_ping["histograms"] if name.startswith("STARTUP_")}
    convert_payload(fixture_ping, aurora_23)
    assert len(startup_names) == 57
    assert startup_names <= set(fixture_ping["histograms"])


def test_stored_record_bounds_fit_every_array(fixture_ping, oracle, aurora_23) -> None:
    convert_payload(fixture_ping, aurora_23)
    for payload in (fixture_ping, oracle):
        bounds = record_bounds(payload, aurora_23)
        assert set(bounds) == set(payload["histograms"])
        for name, array in payload["histograms"].items():
            assert len(array) == len(bounds[name]) + 5, name
    assert record_bounds(fixture_ping, aurora_23)["GC_REASON_2"] == tuple(range(101))
    # the original's 102-bucket arrays get the 102 bounds they were written with
    assert record_bounds(oracle, aurora_23)["GC_REASON_2"] == tuple(range(102))


def test_stored_record_bounds_leave_out_arrays_that_disagree_with_the_spec() -> None:
    spec = spec_of(A=LIN_100, B=LIN_100, C=LIN_100, BROKEN={"kind": "linear", "high": 1, "n_buckets": 10})
    payload = {"ver": 2, "histograms": {"A": [0] * 15, "B": [0] * 7, "UNKNOWN": [0] * 15, "C": "x",
                                        "BROKEN": [0] * 15}}
    assert record_bounds(payload, spec) == {"A": bucket_bounds("linear", 1, 100, 10)}
    assert record_bounds({"ver": 2}, spec) == {}


# --------------------------------------------------------------------------
# The HistogramSpec API
# --------------------------------------------------------------------------

def test_startup_rule_prefers_the_exact_name_and_strips_one_prefix() -> None:
    spec = spec_of(CACHE_AGE=LIN_100, STARTUP_CACHE_AGE=EXP_3000, HTTP_X={"kind": "flag"})
    assert spec.bounds("STARTUP_CACHE_AGE") == bucket_bounds("exponential", 1, 3000, 10)  # exact name wins
    assert spec.bounds("STARTUP_STARTUP_CACHE_AGE") == spec.bounds("STARTUP_CACHE_AGE")  # one prefix stripped
    assert spec.bounds("STARTUP_HTTP_X") == (0, 1, 2)
    assert spec.bounds("STARTUP_STARTUP_HTTP_X") is None  # only one prefix is stripped
    assert spec.bounds("HTTP_Y") is None and spec.bounds("STARTUP_HTTP_Y") is None
    assert "STARTUP_HTTP_X" in spec and "STARTUP_HTTP_Y" not in spec


def test_bounds_are_computed_once_and_shared_by_equal_layouts() -> None:
    spec = spec_of(A=EXP_3000, B=dict(EXP_3000, high="3 * 1000"))
    assert spec.cached_index("A") is None
    first = spec.index("A")
    assert spec.cached_index("A") is first and spec.index("A") is first
    assert spec.index("B") is first


def test_a_cpp_constant_does_not_make_the_spec_unusable(aurora_23) -> None:
    with pytest.raises(UnresolvedConstantError, match="GC_REASON_2"):
        aurora_23.bounds("GC_REASON_2")
    with pytest.raises(UnresolvedConstantError):  # remembered, raised again
        aurora_23.bounds("GC_REASON_2")
    assert aurora_23.bounds("GC_REASON_2", bucket_count=101) == tuple(range(101))
    assert aurora_23.bounds("GC_MS") is not None
    assert set(aurora_23.definition_errors()) == {"GC_REASON_2", "STARTUP_MEASUREMENT_ERRORS"}


def test_a_spec_must_be_an_object() -> None:
    with pytest.raises(Exception, match="must be an object"):
        HistogramSpec.from_json(b"[1, 2]", revision="r")
    with pytest.raises(Exception, match="json parse failed"):
        HistogramSpec.from_json(b"{nope", revision="r")


# --------------------------------------------------------------------------
# Conversion rules
# --------------------------------------------------------------------------

def test_values_land_in_their_bucket_and_statistics_follow() -> None:
    payload = ping({"E": exponential_entry({"3": 0, "8": 2, "57": 5, "154": 0}),
                    "L": linear_entry({"0": 1, "51": 3, "63": 0})})
    assert convert_payload(payload, spec_of(E=EXP_3000, L=LIN_100)) == []
    assert payload["histograms"] == {
        "E": [0, 0, 0, 2, 0, 5, 0, 0, 0, 0, 30, 2.5, 4.25, -1, -1],
        "L": [1, 0, 0, 0, 0, 3, 0, 0, 0, 0, 40, -1, -1, 1600, 0],
    }
    assert payload["ver"] == 2


def test_missing_statistics_become_minus_one() -> None:
    entry = exponential_entry({"1": 1})
    del entry["log_sum_squares"], entry["sum"]
    payload = ping({"E": entry, "B": {"values": {}}})
    convert_payload(payload, spec_of(E=EXP_3000, B={"kind": "boolean"}))
    assert payload["histograms"]["E"] == [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, -1, 2.5, -1, -1, -1]
    assert payload["histograms"]["B"] == [0, 0, 0, -1, -1, -1, -1, -1]


def test_every_statistic_sent_is_kept_whatever_the_kind() -> None:
    payload = ping({"E": exponential_entry({}, sum_squares_lo=7, sum_squares_hi=8),
                    "L": linear_entry({}, log_sum_squares=9.5)})
    convert_payload(payload, spec_of(E=EXP_3000, L=LIN_100))
    assert payload["histograms"]["E"][-5:] == [30, 2.5, 4.25, 7, 8]
    assert payload["histograms"]["L"][-5:] == [40, -1, 9.5, 1600, 0]


def test_unknown_histograms_are_dropped_and_counted_but_the_record_is_kept() -> None:
    payload = ping({"KNOWN": linear_entry({}), "NEW_1": linear_entry({}), "NEW_2": {"nonsense": True}})
    warnings = convert_payload(payload, spec_of(KNOWN=LIN_100))
    assert warnings == [UNKNOWN_HISTOGRAM, UNKNOWN_HISTOGRAM]
    assert list(payload["histograms"]) == ["KNOWN"]
    assert set(warnings) <= set(WARNINGS)


def test_empty_histograms_are_valid() -> None:
    payload = ping({}, simpleMeasurements={"uptime": 3})
    assert convert_payload(payload, spec_of()) == []
    assert payload == {"ver": 2, "info": {"revision": FIXTURE_REVISION}, "histograms": {},
                       "simpleMeasurements": {"uptime": 3}}


@pytest.mark.parametrize("key", ["7", "01", "3000.0", "-1", "abc", "", " 3", "4000"])
def test_a_bucket_key_that_is_not_a_lower_bound_rejects_the_record(key: str) -> None:
    error = rejected(ping({"E": exponential_entry({"3": 1, key: 1})}), spec_of(E=EXP_3000),
                     "bad_payload", "is not one of the 10 lower bounds")
    assert repr(key) in str(error) and "'E'" in str(error)


@pytest.mark.parametrize("count", [1.0, 2.5, "3", True, False, None, [1], {"n": 1}, -1, 2**63, float("inf")])
def test_a_count_that_is_not_a_non_negative_integer_rejects_the_record(count: Any) -> None:
    rejected(ping({"E": exponential_entry({"1": 4, "3": count})}), spec_of(E=EXP_3000),
             "bad_payload", r"histogram 'E': count .* of bucket '3' is not a non-negative integer")


@pytest.mark.parametrize("statistic", ["sum", "log_sum", "log_sum_squares", "sum_squares_lo"])
@pytest.mark.parametrize("value", ["12", None, True, [1]])
def test_a_statistic_that_is_not_a_number_rejects_the_record(statistic: str, value: Any) -> None:
    entry = exponential_entry({"1": 1})
    entry[statistic] = value
    rejected(ping({"E": entry}), spec_of(E=EXP_3000), "bad_payload", f"statistic {statistic} is .*, not a number")


@pytest.mark.parametrize("histogram, message", [
    ([1, 2, 3], "histogram 'E': must be an object, got list"),
    ("values", "histogram 'E': must be an object, got str"),
    (None, "histogram 'E': must be an object, got NoneType"),
    ({"range": [1, 3000], "sum": 0}, "histogram 'E': has no values"),
    ({"values": [["1", 2]], "sum": 0}, "histogram 'E': values must be an object, got list"),
    ({"values": "1:2", "sum": 0}, "histogram 'E': values must be an object, got str"),
])
def test_malformed_histogram_objects_reject_the_record(histogram: Any, message: str) -> None:
    rejected(ping({"E": histogram}), spec_of(E=EXP_3000), "bad_payload", message)


@pytest.mark.parametrize("payload, message", [
    ([], "payload must be a JSON object, got list"),
    ({"info": {}, "histograms": {}}, "payload has no ver"),
    ({"ver": 2, "info": {}, "histograms": {}}, r"already converted \(ver 2\)"),
    ({"ver": 3, "info": {}, "histograms": {}}, "payload ver is 3"),
    ({"ver": "1", "info": {}, "histograms": {}}, "payload ver is '1'"),
    ({"ver": 1.0, "info": {}, "histograms": {}}, "payload ver is 1.0"),
    ({"ver": True, "info": {}, "histograms": {}}, "payload ver is True"),
    ({"version": 4, "info": {}, "histograms": {}}, "payload has no ver"),
    ({"ver": 1, "histograms": {}}, "payload has no info object"),
    ({"ver": 1, "info": "x", "histograms": {}}, "payload has no info object"),
    ({"ver": 1, "info": {"revision": "http://hg.mozilla.org/mozilla-central/rev/0123456789ab"}},
     "has info.revision but no histograms"),
    ({"ver": 1, "info": {}, "histograms": []}, "payload has histograms of type list"),
])
def test_record_level_checks(payload: Any, message: str) -> None:
    rejected(payload, spec_of(), "bad_payload", message)


def test_a_payload_with_neither_histograms_nor_revision_converts() -> None:
    payload = {"ver": 1, "info": {"reason": "android-anr-report"}, "androidANR": "..."}
    assert convert_payload(payload, spec_of()) == []
    assert payload == {"ver": 2, "info": {"reason": "android-anr-report"}, "androidANR": "..."}


def test_an_already_converted_fixture_is_refused(fixture_ping, aurora_23) -> None:
    convert_payload(fixture_ping, aurora_23)
    rejected(fixture_ping, aurora_23, "bad_payload", "already converted")


def test_the_payload_is_untouched_when_a_later_histogram_fails() -> None:
    payload = ping({"GOOD": linear_entry({"1": 1}), "BAD": linear_entry({"2": 1})})
    rejected(payload, spec_of(GOOD=LIN_100, BAD=LIN_100), "bad_payload", "histogram 'BAD': bucket key '2'")


def test_a_broken_definition_in_use_is_a_conversion_error_and_unused_ones_do_not_matter() -> None:
    spec = spec_of(GOOD=LIN_100, BROKEN={"kind": "linear", "high": 100, "n_buckets": 10, "n_values": 3})
    payload = ping({"GOOD": linear_entry({"1": 1})})
    convert_payload(payload, spec)
    assert payload["histograms"]["GOOD"][1] == 1
    rejected(ping({"BROKEN": linear_entry({})}), spec, "conversion_error",
             "'BROKEN': key 'n_values' is not allowed")


# --------------------------------------------------------------------------
# C++ constants resolved from the ping
# --------------------------------------------------------------------------

GC_SPEC = {"kind": "enumerated", "n_values": "JS::gcreason::NUM_TELEMETRY_REASONS"}


def gc_entry(**overrides: Any) -> dict[str, Any]:
    entry = {"range": [1, 100], "bucket_count": 101, "histogram_type": 1, "values": {"48": 3, "49": 0},
             "sum": 144, "sum_squares_lo": 6912, "sum_squares_hi": 0}
    entry.update(overrides)
    return entry


def test_a_cpp_constant_is_taken_from_a_consistent_ping() -> None:
    payload = ping({"GC_REASON_2": gc_entry()})
    convert_payload(payload, spec_of(GC_REASON_2=GC_SPEC))
    array = payload["histograms"]["GC_REASON_2"]
    assert len(array) == 106 and array[48] == 3 and array[-5:] == [144, -1, -1, 6912, 0]


def test_a_cpp_constant_in_high_or_n_buckets_is_taken_from_the_ping() -> None:
    spec = spec_of(T={"kind": "exponential", "low": 1, "high": "mozilla::MAX_MS", "n_buckets": 10},
                   N={"kind": "exponential", "high": 3000, "n_buckets": "NUM_BUCKETS"})
    payload = ping({"T": exponential_entry({"1114": 2}), "N": exponential_entry({"414": 3})})
    convert_payload(payload, spec)
    assert payload["histograms"]["T"][8] == 2 and payload["histograms"]["N"][7] == 3


def test_a_cpp_constant_in_high_still_checks_the_ping_bucket_count() -> None:
    spec = spec_of(T={"kind": "exponential", "high": "mozilla::MAX_MS", "n_buckets": 10})
    rejected(ping({"T": exponential_entry({}, bucket_count=11)}), spec, "bad_payload",
             r"bucket_count 11 does not fit exponential \(1, 3000, 10\)")


def test_a_cpp_constant_with_a_histogram_that_is_not_an_object_rejects_the_record() -> None:
    rejected(ping({"GC_REASON_2": [1, 2]}), spec_of(GC_REASON_2=GC_SPEC), "bad_payload",
             "histogram 'GC_REASON_2': must be an object, got list")


@pytest.mark.parametrize("overrides, message", [
    ({"range": [1, 50]}, r"range \[1, 50\] does not fit enumerated \(1, 100, 101\)"),
    ({"histogram_type": 0}, "histogram_type 0 does not fit"),
    ({"bucket_count": 1}, "n_values is 0; it must be at least 2"),
    ({"bucket_count": MAX_BUCKET_COUNT + 2, "range": [1, MAX_BUCKET_COUNT + 1]}, "it must be between 3 and"),
    ({"bucket_count": "101"}, "bucket_count must be an integer"),
    ({"range": "1-100"}, "range must be"),
    ({"histogram_type": True}, "histogram_type must be an integer, got True"),
])
def test_a_cpp_constant_with_an_inconsistent_ping_rejects_the_record(overrides: dict, message: str) -> None:
    rejected(ping({"GC_REASON_2": gc_entry(**overrides)}), spec_of(GC_REASON_2=GC_SPEC), "bad_payload", message)


def test_a_cpp_constant_without_bucket_count_rejects_the_record() -> None:
    entry = gc_entry()
    del entry["bucket_count"]
    rejected(ping({"GC_REASON_2": entry}), spec_of(GC_REASON_2=GC_SPEC), "bad_payload",
             "the ping has no bucket_count to resolve it")


# --------------------------------------------------------------------------
# Add-on histograms (HISTOGRAMS.md §2.4)
# --------------------------------------------------------------------------

PDFJS_PROBES = {  # name: (histogram_type, range, bucket_count)
    "PDF_VIEWER_USED": (2, [1, 2], 3),
    "PDF_VIEWER_FALLBACK_SHOWN": (2, [1, 2], 3),
    "PDF_VIEWER_FORM": (2, [1, 2], 3),
    "PDF_VIEWER_DOCUMENT_VERSION": (1, [1, 10], 11),
    "PDF_VIEWER_DOCUMENT_GENERATOR": (1, [1, 25], 26),
    "PDF_VIEWER_STREAM_TYPES": (1, [1, 9], 10),
    "PDF_VIEWER_DOCUMENT_SIZE_KB": (0, [2, 65536], 20),
    "PDF_VIEWER_TIME_TO_VIEW_MS": (0, [1, 10000], 50),
}


def addon_entry(histogram_type: int, value_range: list[int], bucket_count: int, values: dict[str, Any],
                **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"range": value_range, "bucket_count": bucket_count, "histogram_type": histogram_type,
                             "values": values, "sum": 1}
    entry.update({"log_sum": 0.5, "log_sum_squares": 0.25} if histogram_type == 0
                 else {"sum_squares_lo": 1, "sum_squares_hi": 0})
    entry.update(overrides)
    return entry


def test_pdfjs_like_addon_histograms_convert_with_their_own_layout() -> None:
    payload = ping({}, addonHistograms={"uriloader@pdf.js": {
        name: addon_entry(*layout, values={}) for name, layout in PDFJS_PROBES.items()}})
    pdf = payload["addonHistograms"]["uriloader@pdf.js"]
    pdf["PDF_VIEWER_DOCUMENT_SIZE_KB"]["values"] = {"208": 0, "370": 3, "658": 1, "1170": 0}
    pdf["PDF_VIEWER_USED"]["values"] = {"0": 0, "1": 2, "2": 0}
    pdf["PDF_VIEWER_DOCUMENT_VERSION"]["values"] = {"6": 1}

    assert convert_addon_histograms(payload) == []

    converted = payload["addonHistograms"]["uriloader@pdf.js"]
    assert {name: len(array) - 5 for name, array in converted.items()} == \
        {name: count for name, (_, _, count) in PDFJS_PROBES.items()}
    size = converted["PDF_VIEWER_DOCUMENT_SIZE_KB"]
    assert size[10] == 3 and size[11] == 1 and sum(size[:20]) == 4  # bounds 370 and 658 (§1.6 pdf.js list)
    assert size[20:] == [1, 0.5, 0.25, -1, -1]
    assert converted["PDF_VIEWER_USED"] == [0, 2, 0, 1, -1, -1, 1, 0]
    assert converted["PDF_VIEWER_DOCUMENT_VERSION"][6] == 1


def test_addon_bounds_are_the_generic_rule_for_the_entry() -> None:
    index = addon_histogram_index("PDF_VIEWER_DOCUMENT_SIZE_KB", addon_entry(0, [2, 65536], 20, {}))
    assert index.bounds == bucket_bounds("exponential", 2, 65536, 20)
    assert index.bounds[-1] == 65536 and index.bounds[9] == 208


def test_payloads_without_addon_histograms_are_left_alone() -> None:
    payload = ping({})
    assert convert_addon_histograms(payload) == [] and "addonHistograms" not in payload
    payload = ping({}, addonHistograms={})
    assert convert_addon_histograms(payload) == [] and payload["addonHistograms"] == {}


@pytest.mark.parametrize("entry, message", [
    ("x", "add-on histogram 'H' must be an object, got str"),
    ([0, 0, 0, 1, -1, -1, 1, 0], "must be an object, got list"),  # already converted
    ({"range": [1, 2], "histogram_type": 2, "values": {}}, "'H' has no bucket_count"),
    ({"bucket_count": 3, "histogram_type": 2, "values": {}}, "'H' has no range"),
    ({"range": [1, 2], "bucket_count": 3, "values": {}}, "'H' has no histogram_type"),
    (addon_entry(7, [1, 2], 3, {}), "histogram_type 7 is not one of"),
    (addon_entry(True, [1, 2], 3, {}), "histogram_type True is not one of"),
    (addon_entry(1, [1], 3, {}), r"range must be \[low, high\] integers"),
    (addon_entry(1, [1, "9"], 3, {}), r"range must be \[low, high\] integers"),
    (addon_entry(1, [1, 9], 3.0, {}), "bucket_count must be an integer"),
    (addon_entry(2, [1, 2], 4, {}), r"a boolean histogram has range \[1, 2\] and 3 buckets"),
    (addon_entry(0, [0, 100], 10, {}), "low is 0; it must be at least 1"),
    (addon_entry(1, [50, 10], 10, {}), r"high \(10\) must be greater than low \(50\)"),
    (addon_entry(0, [1, 100], 2, {}), "n_buckets is 2"),
    (addon_entry(0, [1, 2**40], 10, {}), "exceeds the 32-bit limit"),
    (addon_entry(1, [1, 10], 11, {"5": 1, "11": 1}), r"\['uriloader@pdf.js'\]\['H'\]: bucket key '11'"),
    (addon_entry(1, [1, 10], 11, {"5": 1.5}), r"\['uriloader@pdf.js'\]\['H'\]: count 1.5 of bucket '5'"),
])
def test_malformed_addon_entries_reject_the_record(entry: Any, message: str) -> None:
    payload = ping({}, addonHistograms={"uriloader@pdf.js": {"H": entry}})
    before = copy.deepcopy(payload)
    with pytest.raises(RecordError, match=message) as caught:
        convert_addon_histograms(payload)
    assert caught.value.category == "bad_payload"
    assert "uriloader@pdf.js" in str(caught.value)
    assert payload == before


@pytest.mark.parametrize("addons, message", [
    ([], "addonHistograms must be an object, got list"),
    ({"a@b": [1]}, r"addonHistograms\['a@b'\] must be an object of histograms, got list"),
])
def test_malformed_addon_sections_reject_the_record(addons: Any, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        convert_addon_histograms(ping({}, addonHistograms=addons))


@pytest.mark.parametrize("bucket_count", [MAX_BUCKET_COUNT + 1, 2**31 - 1, 10**18])
def test_a_huge_addon_bucket_count_is_refused_before_allocating(bucket_count: int) -> None:
    payload = ping({}, addonHistograms={"evil@example.com": {
        "H": addon_entry(0, [1, 2**31 - 1], bucket_count, {"1": 1})}})
    tracemalloc.start()
    try:
        with pytest.raises(RecordError, match=f"n_buckets is {bucket_count}; it must be between 3 and "
                                              f"{MAX_BUCKET_COUNT}") as caught:
            convert_addon_histograms(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.category == "bad_payload"
    assert peak < 1_000_000


def test_the_largest_allowed_addon_layout_converts() -> None:
    payload = ping({}, addonHistograms={"big@example.com": {
        "H": addon_entry(1, [1, MAX_BUCKET_COUNT - 1], MAX_BUCKET_COUNT, {str(MAX_BUCKET_COUNT - 1): 1})}})
    convert_addon_histograms(payload)
    assert payload["addonHistograms"]["big@example.com"]["H"][MAX_BUCKET_COUNT - 1] == 1
