"""The compiled fast path (``telemetry_core.convert._speedups``) against the
pure-Python converter: the same arrays, warnings and errors for real pings,
every malformed shape and thousands of random hostile histograms; exact
reference counts; no crash on objects a Python caller could pass."""

from __future__ import annotations

import copy
import gc
import gzip
import json
import random
import sys
import tracemalloc
import weakref
from pathlib import Path
from typing import Any, Callable

import orjson
import pytest

from telemetry_core.convert import conversion
from telemetry_core.convert.conversion import convert_payload
from telemetry_core.errors import RecordError
from telemetry_core.convert.spec import HistogramSpec
from telemetry_core.store.spool.files import SpoolReader
from test_conversion import EXP_3000, LIN_100, exponential_entry, linear_entry, ping, spec_of

FIXTURES = Path(__file__).parent / "fixtures"
compiled_histograms = conversion._compiled_histograms


def test_the_compiled_module_is_built_and_in_use() -> None:
    assert conversion.COMPILED, ("telemetry_core.convert._speedups was not built: install a C compiler and "
                                 "the Python headers, then reinstall the package")


def outcome(payload: Any, spec: HistogramSpec, *, compiled: bool) -> tuple[str, Any]:
    """What converting a copy of ``payload`` gives: its JSON and warnings, or the error.
    The stdlib's JSON tells 1, 1.0 and true apart and takes str subclasses as keys."""
    payload = copy.deepcopy(payload)
    saved = conversion._compiled_histograms
    conversion._compiled_histograms = compiled_histograms if compiled else None
    try:
        warnings = convert_payload(payload, spec)
    except RecordError as error:
        return "error", (error.category, str(error))
    finally:
        conversion._compiled_histograms = saved
    return "converted", (json.dumps(payload), warnings)


def warmed(spec: HistogramSpec, payload: dict[str, Any]) -> HistogramSpec:
    """Cache the index of every histogram of ``payload`` that has one, so the compiled pass sees them."""
    for name in payload.get("histograms", {}) if isinstance(payload.get("histograms"), dict) else ():
        try:
            spec.index(name)
        except Exception:  # noqa: BLE001 - a broken definition stays uncached; the converter reports it
            continue
    return spec


def assert_same(payload: Any, spec: HistogramSpec) -> tuple[str, Any]:
    expected = outcome(payload, spec, compiled=False)
    assert outcome(payload, spec, compiled=True) == expected
    return expected


# --------------------------------------------------------------------------- real pings


@pytest.fixture(scope="module")
def specs() -> dict[str, HistogramSpec]:
    """The three fixture revisions (AURORA_23, 24, 25), the first being the fixture ping's."""
    files = sorted(FIXTURES.glob("histograms_json__FIREFOX_AURORA_*_BASE__as_*.json"))
    assert len(files) == 3
    return {path.stem: HistogramSpec.from_json(path.read_bytes(), revision=path.stem) for path in files}


@pytest.fixture(scope="module")
def fixture_ping() -> dict[str, Any]:
    (record,) = SpoolReader(FIXTURES / "payload_v1_packed_log__telemetry1.log").read_all()
    return orjson.loads(gzip.decompress(record.body))


def test_the_fixture_ping_converts_the_same_compiled_and_in_python(fixture_ping, specs) -> None:
    for spec in specs.values():
        kind, (text, warnings) = assert_same(fixture_ping, warmed(spec, fixture_ping))
        assert kind == "converted" and len(json.loads(text)["histograms"]) > 200


def test_the_compiled_pass_leaves_only_the_cpp_constant_and_unknown_names_to_python(fixture_ping, specs) -> None:
    spec = warmed(next(iter(specs.values())), fixture_ping)
    converted, pending = compiled_histograms(copy.deepcopy(fixture_ping["histograms"]), spec.cached_indexes)
    unknown = [name for name in fixture_ping["histograms"] if name not in spec]
    assert "HTTP_OFFLINE_CACHE_DOCUMENT_LOAD" in unknown  # defined from Firefox 24 on
    assert sorted(pending) == sorted(["GC_REASON_2", *unknown])
    assert list(converted) == list(fixture_ping["histograms"]) and converted["GC_REASON_2"] is None


def packed(rng: random.Random, bounds: tuple[int, ...], exponential: bool) -> dict[str, Any]:
    """A histogram as Firefox packs it, with random buckets and statistics."""
    chosen = sorted(rng.sample(range(len(bounds)), rng.randint(1, min(8, len(bounds)))))
    values = {str(bounds[i]): rng.choice([0, 1, 7, 2**40, 2**63 - 1]) for i in chosen}
    entry: dict[str, Any] = {"range": [bounds[1], bounds[-1]], "bucket_count": len(bounds),
                             "histogram_type": 0 if exponential else 1, "values": values, "sum": rng.randint(0, 10**6)}
    if exponential:
        entry.update(log_sum=rng.random() * 40, log_sum_squares=rng.random() * 900)
    else:
        entry.update(sum_squares_lo=rng.randint(0, 2**32 - 1), sum_squares_hi=rng.randint(0, 50))
    return entry


def test_generated_pings_of_every_revision_convert_the_same(fixture_ping, specs) -> None:
    rng = random.Random(2013)
    for spec in specs.values():
        names = [name for name in spec if name not in spec.definition_errors()]
        for _ in range(5):
            histograms = {}
            for name in rng.sample(names, 120):
                layout = spec.layout(name)
                histograms[name] = packed(rng, spec.bounds(name), layout.kind == "exponential")
                if rng.random() < 0.1:
                    histograms["STARTUP_" + name] = packed(rng, spec.bounds(name), layout.kind == "exponential")
            histograms["NOT_DEFINED_ANYWHERE"] = packed(rng, (0, 1, 2), False)
            payload = dict(fixture_ping, histograms=histograms)
            kind, (_, warnings) = assert_same(payload, warmed(spec, payload))
            assert kind == "converted" and warnings == ["unknown_histogram"]


# --------------------------------------------------------------------------- malformed shapes

class StrKey(str):
    """A str subclass, as only a Python caller can build (JSON gives exact strs)."""


class DictValues(dict):
    pass


def _without(entry: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if key not in keys}


EXP = exponential_entry({"1": 4, "3": 2})
LIN = linear_entry({"1": 4, "13": 2})
MALFORMED: list[tuple[str, Any]] = [
    ("no sum", _without(EXP, "sum")),
    ("no log_sum_squares", _without(EXP, "log_sum_squares")),
    ("no sum_squares_hi", _without(LIN, "sum_squares_hi")),
    ("no statistic at all", _without(LIN, "sum", "sum_squares_lo", "sum_squares_hi")),
    ("both families", dict(EXP, sum_squares_lo=1, sum_squares_hi=0)),
    ("log_sum with sum_squares_lo only", dict(EXP, sum_squares_lo=1)),
    ("sum_squares with log_sum_squares", dict(LIN, log_sum_squares=1.5)),
    ("bool sum", dict(EXP, sum=True)),
    ("str sum", dict(EXP, sum="30")),
    ("None log_sum", dict(EXP, log_sum=None)),
    ("list statistic", dict(LIN, sum_squares_lo=[1])),
    ("float statistics", dict(LIN, sum=1.5, sum_squares_lo=2.0)),
    ("huge int statistic", dict(LIN, sum=10**40)),
    ("values is a list", dict(EXP, values=[["1", 2]])),
    ("values is a str", dict(EXP, values="1:2")),
    ("no values", _without(EXP, "values")),
    ("empty values", dict(EXP, values={})),
    ("values is a dict subclass", dict(EXP, values=DictValues({"1": 4}))),
    ("histogram is a dict subclass", DictValues(EXP)),
    ("histogram is a list", [1, 2, 3]),
    ("histogram is None", None),
    ("histogram is a number", 7),
    ("extra keys", dict(EXP, static=True, bucket_count="ten", range=None)),
    ("str-subclass statistic key", {StrKey("sum") if key == "sum" else key: value for key, value in EXP.items()}),
    ("str-subclass bucket key", dict(EXP, values={StrKey("1"): 4})),
    ("int bucket key", dict(EXP, values={1: 4})),
    ("None bucket key", dict(EXP, values={None: 4})),
    ("tuple bucket key", dict(EXP, values={(1,): 4})),
]
for key in ["01", "+1", "-1", " 1", "1 ", "1.0", "1e0", "0x1", "", "7", "4000", "3000000000", "9" * 18, "9" * 19,
            "1" * 40, "\u0661", "\uff11", "1\x00", "𝟏", "١٣"]:
    MALFORMED.append((f"bucket key {key!r}", dict(EXP, values={"1": 1, key: 2})))
for count in [True, False, None, 1.0, -1, -(2**63), 2**63 - 1, 2**63, 2**64, 10**30, "3", [1], {"n": 1},
              float("nan"), float("inf")]:
    MALFORMED.append((f"count {count!r}", dict(EXP, values={"3": count})))


@pytest.mark.parametrize("label, histogram", MALFORMED, ids=[label for label, _ in MALFORMED])
def test_every_malformed_shape_gives_the_same_outcome(label: str, histogram: Any) -> None:
    spec = spec_of(E=EXP_3000, L=LIN_100)
    spec.index("E"), spec.index("L")
    payload = ping({"L": linear_entry({"1": 1}), "E": histogram, "UNKNOWN": None})
    assert_same(payload, spec)


def test_a_str_subclass_histogram_name_sends_the_payload_to_python() -> None:
    spec = spec_of(E=EXP_3000)
    spec.index("E")
    histograms = {StrKey("E"): exponential_entry({"1": 1})}
    assert compiled_histograms(histograms, spec.cached_indexes) is None
    assert_same(ping(histograms), spec)


def test_a_dict_subclass_of_histograms_goes_to_python() -> None:
    spec = spec_of(E=EXP_3000)
    spec.index("E")
    assert compiled_histograms(DictValues(E=exponential_entry({"1": 1})), spec.cached_indexes) is None


HOSTILE_VALUES: list[Any] = [0, 1, -1, 7, 2**31, 2**63 - 1, 2**63, 10**19, True, False, None, 1.0, -0.0, 2.5,
                             float("nan"), float("inf"), "1", "", [], [1], {}, {"1": 1}, b"1", StrKey("1")]
HOSTILE_KEYS = ["0", "1", "3", "8", "21", "57", "154", "414", "1114", "3000", "13", "100", "01", "2", "-0", "٣",
                StrKey("3"), "9" * 19, " 8"]


def random_histogram(rng: random.Random) -> Any:
    """Mostly well-formed histograms with a few fields swapped for hostile values."""
    if rng.random() < 0.03:
        return rng.choice(HOSTILE_VALUES)
    base = copy.deepcopy(rng.choice([EXP, LIN]))
    base["values"] = {rng.choice(HOSTILE_KEYS[:12]): rng.choice([0, 1, 5, 2**62]) for _ in range(rng.randint(0, 6))}
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        action = rng.random()
        if action < 0.3 and isinstance(base.get("values"), dict):
            base["values"][rng.choice(HOSTILE_KEYS)] = rng.choice(HOSTILE_VALUES)
        elif action < 0.6:
            base[rng.choice(["sum", "log_sum", "log_sum_squares", "sum_squares_lo", "sum_squares_hi",
                             "values"])] = rng.choice(HOSTILE_VALUES)
        else:
            base.pop(rng.choice(list(base)), None)
    return base


def test_thousands_of_random_hostile_histograms_give_the_same_outcome() -> None:
    rng = random.Random(1378822911)
    spec = spec_of(E=EXP_3000, L=LIN_100, STARTUP_ONLY=LIN_100)
    for name in ("E", "L", "STARTUP_E"):
        spec.index(name)
    outcomes = {"error": 0, "converted": 0}
    for _ in range(3000):
        names = rng.sample(["E", "L", "STARTUP_E", "STARTUP_L", "X"], rng.randint(1, 5))
        kind, _ = assert_same(ping({name: random_histogram(rng) for name in names}), spec)
        outcomes[kind] += 1
    assert outcomes["error"] > 300 and outcomes["converted"] > 300  # both sides were really exercised


# --------------------------------------------------------------------------- memory and references


def test_reference_counts_are_exact(fixture_ping, specs) -> None:
    spec = warmed(next(iter(specs.values())), fixture_ping)
    histograms = copy.deepcopy(fixture_ping["histograms"])
    marker = 2**62 + 12345  # a count object of our own, so its reference count is ours to read
    histograms["CYCLE_COLLECTOR"]["values"]["0"] = marker
    before_zero, before_marker = sys.getrefcount(0), sys.getrefcount(marker)
    converted, _ = compiled_histograms(histograms, spec.cached_indexes)
    after_zero = sys.getrefcount(0)
    zero = int("0")  # the one cached 0 object
    zeros = sum(1 for row in converted.values() if row is not None for item in row if item is zero)
    del zero
    assert after_zero - before_zero == zeros > 1000
    assert sys.getrefcount(marker) == before_marker + 1
    del converted
    end_zero, end_marker = sys.getrefcount(0), sys.getrefcount(marker)  # not inside assert: pytest's
    assert end_zero == before_zero and end_marker == before_marker     # rewriting holds its own references


def test_rows_stay_tracked_so_a_cycle_user_code_makes_through_one_is_collected(fixture_ping, specs) -> None:
    """Rows are lists handed to plugins and jobs; one that holds a container can be part of a cycle."""
    spec = warmed(next(iter(specs.values())), fixture_ping)
    converted, _ = compiled_histograms(copy.deepcopy(fixture_ping["histograms"]), spec.cached_indexes)
    rows = [row for row in converted.values() if row is not None]
    assert rows and all(gc.is_tracked(row) for row in rows)
    holder = Kept()
    holder.row = rows[0]
    rows[0].append(holder)  # holder -> row -> holder
    gone = weakref.ref(holder)
    del holder, rows, converted
    gc.collect()
    assert gone() is None


def test_converting_many_times_does_not_grow_memory(fixture_ping, specs) -> None:
    spec = warmed(next(iter(specs.values())), fixture_ping)
    bad = ping({"E": exponential_entry({"1": 4, "7": 1})})
    bad_spec = spec_of(E=EXP_3000)
    bad_spec.index("E")

    def convert_some() -> None:
        for _ in range(20):
            convert_payload(copy.deepcopy(fixture_ping), spec)
            with pytest.raises(RecordError):
                convert_payload(copy.deepcopy(bad), bad_spec)

    convert_some()
    gc.collect()
    tracemalloc.start()
    try:
        convert_some()
        gc.collect()
        first, _ = tracemalloc.get_traced_memory()
        convert_some()
        convert_some()
        gc.collect()
        second, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert second - first < 64 * 1024


class Kept:
    """Something in a payload that can tell when the payload is gone."""


def test_a_converted_or_rejected_payload_is_not_kept_alive(fixture_ping, specs) -> None:
    # A C++ constant (GC_REASON_2) and a broken definition both raise errors the
    # spec remembers; neither they nor a RecordError may keep the payload's frames.
    broken = HistogramSpec({"BROKEN": {"kind": "linear", "high": "NOT_A_NUMBER", "n_buckets": 3, "description": ""}})
    cases: list[tuple[Callable[[], dict[str, Any]], HistogramSpec]] = [
        (lambda: copy.deepcopy(fixture_ping), next(iter(specs.values()))),
        (lambda: ping({"BROKEN": linear_entry({"1": 1})}), broken),
        (lambda: ping({"BROKEN": linear_entry({"1": 1}, bucket_count=3, range=[1, 100])}), broken),
    ]
    for make_payload, spec in cases:
        for _ in range(2):  # the first conversion parses the definition, the second reuses it
            payload = make_payload()
            keeper = Kept()
            payload["info"] = dict(payload["info"], keeper=keeper)
            alive = weakref.ref(keeper)
            del keeper
            try:
                convert_payload(payload, spec)
            except RecordError:
                pass
            del payload
            assert alive() is None, spec


# --------------------------------------------------------------------------- objects only Python callers build


def test_an_index_without_packed_bounds_is_an_error_not_a_crash() -> None:
    with pytest.raises(AttributeError):
        compiled_histograms({"E": exponential_entry({"1": 1})}, {"E": object()})

    class NotBytes:
        packed_bounds = "0,1,3"

    with pytest.raises(TypeError, match="packed_bounds must be bytes"):
        compiled_histograms({"E": exponential_entry({"1": 1})}, {"E": NotBytes()})


def test_an_index_whose_attribute_changes_the_payload_does_not_crash() -> None:
    histogram = exponential_entry({"1": 4, "3": 2})

    class Meddling:
        @property
        def packed_bounds(self) -> bytes:
            histogram.clear()  # frees every statistic and the values object
            gc.collect()
            return spec.cached_index("E").packed_bounds

    spec = spec_of(E=EXP_3000)
    spec.index("E")
    converted, pending = compiled_histograms({"E": histogram}, {"E": Meddling()})
    assert converted == {"E": None} and pending == ["E"]


def test_empty_packed_bounds_leave_the_histogram_to_python() -> None:
    class Unpacked:
        packed_bounds = b""

    assert compiled_histograms({"E": exponential_entry({"1": 1})}, {"E": Unpacked()}) == ({"E": None}, ["E"])


@pytest.mark.parametrize("arguments", [(), ({},), ({}, {}, {}), ([], {}), ({}, [])])
def test_wrong_arguments_raise_type_error(arguments: tuple[Any, ...]) -> None:
    with pytest.raises(TypeError, match="convert_histograms"):
        compiled_histograms(*arguments)

