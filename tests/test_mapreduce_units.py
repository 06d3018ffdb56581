"""The parts of MapReduce that need no archive: filters, job scripts, partitioning."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import pytest

from telemetry_core.compress.lzma_alone import LzmaAloneCodec
from telemetry_core.interfaces import InputFile, JobContext, JobSpec
from telemetry_core.reduce.filters import DimensionFilter, FilterError
from telemetry_core.reduce.histograms import HistogramLookup
from telemetry_core.reduce.inputs import parse_name
from telemetry_core.reduce.job import JobScriptError, load_job
from telemetry_core.reduce.tasks import (Grouper, MapTask, ReduceTask, adapt_filters, balance, partition_of,
                                            stable_hash)
from telemetry_core.schema import Schema

SCHEMA = Schema.load(None)


def dims_filter(*entries, **extra):
    return DimensionFilter.from_json({"version": 1, "dimensions": list(entries), **extra}, SCHEMA)


# --------------------------------------------------------------------------- filters


def test_filter_values_lists_and_ranges():
    flt = dims_filter({"field_name": "reason", "allowed_values": ["saved-session"]},
                      {"field_name": "appName", "allowed_values": "Firefox OS"},
                      {"field_name": "appBuildID", "allowed_values": {"min": "20130600"}},
                      {"field_name": "submission_date", "allowed_values": {"min": 20130901, "max": 20130930}})
    assert flt.matches(("saved-session", "Firefox_OS", "beta", "24.0", "20130700000000", "20130910"))
    assert not flt.matches(("idle-daily", "Firefox_OS", "beta", "24.0", "20130700000000", "20130910"))
    assert not flt.matches(("saved-session", "Firefox_OS", "beta", "24.0", "20130500000000", "20130910"))
    assert not flt.matches(("saved-session", "Firefox_OS", "beta", "24.0", "20130700000000", "20131001"))
    assert not flt.matches(("saved-session", "Firefox_OS", "beta", "24.0", "20130700000000", "OTHER"))
    assert flt.includes(2, "anything") and flt.finite_values(0) == frozenset({"saved-session"})
    assert not flt.include_invalid


def test_the_original_filter_fixture_loads(tmp_path):
    flt = DimensionFilter.load(os.path.join(os.path.dirname(__file__), "fixtures", "filter__v2_include_all.json"),
                               SCHEMA)
    assert flt.matches(("a", "b", "c", "d", "e", "f"))


@pytest.mark.parametrize("document, message", [
    ([], "must be a JSON object"),
    ({"version": 2}, "unsupported version 2"),
    ({"dimension": []}, "unknown key 'dimension'"),
    ({"include_invalid": "yes"}, "include_invalid must be true or false"),
    ({"dimensions": {}}, '"dimensions" must be a list'),
    ({"dimensions": [{"field_name": "colour", "allowed_values": "*"}]}, "'colour' is not a dimension"),
    ({"dimensions": [{"field_name": "reason"}]}, "allowed_values is missing"),
    ({"dimensions": [{"field_name": "reason", "allowed_values": "*", "x": 1}]}, "field_name and allowed_values only"),
    ({"dimensions": [{"field_name": "appName", "allowed_values": "*"},
                     {"field_name": "reason", "allowed_values": "*"}]}, "out of order"),
    ({"dimensions": [{"field_name": "reason", "allowed_values": "*"},
                     {"field_name": "reason", "allowed_values": "*"}]}, "listed twice"),
    ({"dimensions": [{"field_name": "reason", "allowed_values": []}]}, "an empty list allows nothing"),
    ({"dimensions": [{"field_name": "reason", "allowed_values": [{"a": 1}]}]}, "list items must be strings"),
    ({"dimensions": [{"field_name": "reason", "allowed_values": {"low": 1}}]}, "a range is"),
    ({"dimensions": [{"field_name": "reason", "allowed_values": {"min": 5, "max": 1}}]}, "greater than max"),
    ({"dimensions": [{"field_name": "reason", "allowed_values": {"min": "a", "max": 1}}]}, "both be strings"),
    ({"dimensions": [{"field_name": "reason", "allowed_values": {"min": [1]}}]}, "bounds must be strings or numbers"),
    ({"dimensions": [{"field_name": "reason", "allowed_values": 42}]}, "allowed_values must be"),
])
def test_bad_filters_say_what_is_wrong(document, message):
    with pytest.raises(FilterError, match=message) as caught:
        DimensionFilter.from_json(document, SCHEMA, "f.json")
    assert "\n" not in str(caught.value) and "filter f.json" in str(caught.value)


def test_unreadable_filter_files(tmp_path):
    with pytest.raises(FilterError, match="does not exist"):
        DimensionFilter.load(tmp_path / "missing.json", SCHEMA)
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1,\n "dimensions": [}')
    with pytest.raises(FilterError, match=r"broken.json:2:\d+: not valid JSON"):
        DimensionFilter.load(broken, SCHEMA)


# --------------------------------------------------------------------------- job scripts


def script(tmp_path, body, name="job.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize("body, message", [
    ("def map(k, d, v, cx)\n    pass\n", r"job.py:1: syntax error"),
    ("import no_such_module_here\n", r"job.py:1 failed while loading: ModuleNotFoundError"),
    ("import sys\nsys.exit(3)\n", r"job.py:2 failed while loading: SystemExit: 3"),
    ("def reduce(k, v, cx):\n    pass\n", r"defines no map\(key, dims, value, context\) function"),
    ("map = 5\n", r"map is a int, not a function"),
    ("def map(key, value):\n    pass\n", r"map\(key, value\) cannot be called as map\(key, dims, value, context\)"),
    ("def map(k, d, v, cx):\n    pass\ndef reduce(k, v):\n    pass\n", r"reduce\(k, v\) cannot be called"),
])
def test_broken_job_scripts_give_one_clear_line(tmp_path, body, message):
    with pytest.raises(JobScriptError, match=message) as caught:
        load_job(script(tmp_path, body))
    assert "\n" not in str(caught.value)


def test_job_script_paths(tmp_path):
    with pytest.raises(JobScriptError, match="does not exist"):
        load_job(tmp_path / "nope.py")
    with pytest.raises(JobScriptError, match="is a directory"):
        load_job(tmp_path)


def test_original_job_scripts_load(tmp_path):
    job = load_job(script(tmp_path, """
        # mapreduce/examples/simple_counter.py of the original server
        def map(k, d, v, cx):
            cx.write(k, 1)

        def reduce(k, v, cx):
            cx.write(k, sum(v))
        """))
    assert job.combine is None and job.setup is None and job.reduce is not None
    assert job.module.__name__.startswith("telemetry_job_")


# --------------------------------------------------------------------------- tasks


def test_stable_hash_is_the_same_in_every_process():
    keys = ["20130910", ("a", 1), 7, b"x", 2.5]
    code = ("from telemetry_core.reduce.tasks import stable_hash; "
            f"print([stable_hash(k) for k in {keys!r}])")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert outputs == {f"{[stable_hash(k) for k in keys]}\n"}
    assert stable_hash(1) == stable_hash(1.0) == stable_hash(True)
    assert {partition_of(f"k{i}", 4) for i in range(100)} == {0, 1, 2, 3}


def test_balance_puts_the_largest_files_first_into_the_emptiest_partition():
    items = [InputFile(f"f{size}", size, ()) for size in (1, 9, 5, 5, 3, 8, 2)]
    groups = balance(items, 3)
    totals = sorted(sum(i.size for i in g) for g in groups)
    assert totals == [11, 11, 11]
    assert groups[0][0].size == 9
    assert balance([], 2) == [[], []]


def test_two_argument_filters_still_work():
    filters = adapt_filters([lambda record_id, dims: record_id != "x", lambda record_id, dims, body: b"y" not in body])
    assert [f("x", (), b"") for f in filters] == [False, True]
    assert [f("a", (), b"y") for f in filters] == [True, False]


def test_grouper_combines_every_combine_size_values():
    calls = []

    def combine(key, values, context):
        calls.append(len(values))
        context.write(key, sum(values))

    grouper = Grouper(combine, 3, on_error=lambda key, exc: None)
    for _ in range(7):
        grouper.add("k", 1)
    grouper.combine_all()
    assert grouper.groups == {"k": [7]} and calls == [3, 3, 3]


def test_parse_name():
    assert parse_name("20130814063812.20130910.n1.4.log.xz") == (
        ["20130814063812", "20130910", "n1", "4", "log", "xz"], "xz")
    assert parse_name("20130226031002.20131011.v2.log.e28a4032eb744f089a1828ac7399e5d8.lzma")[1] == "lzma"
    assert parse_name("README.txt") is None and parse_name("a.b.c") is None


def test_lzma_alone_codec_round_trip():
    codec = LzmaAloneCodec()
    packed = io.BytesIO()
    codec.compress(io.BytesIO(b"id\t{}\n" * 100), packed, 0)
    assert packed.getvalue()[:1] == b"\x5d"  # an LZMA-alone header, as the original server wrote
    assert codec.open_reader(io.BytesIO(packed.getvalue())).read() == b"id\t{}\n" * 100


def test_map_task_without_engine_and_reduce_sorting(tmp_path):
    job = load_job(script(tmp_path, """
        def map(key, dims, value, context):
            context.write(dims[0], len(value))

        def reduce(key, values, context):
            context.write(key, sum(values))
        """, "sizes.py"))
    spec = JobSpec(job_path=job.path, filter=None, output="", input_uri="")
    pairs = []
    task = MapTask(job, spec, filters=[], sink=lambda k, v: pairs.append((k, v)), task=0, engine=None)
    task.run_file(InputFile("b/x.log", 10, ("b",)), io.BytesIO(b"1\tabc\n2\tabcd"))
    task.run_file(InputFile("a/x.log", 10, ("a",)), io.BytesIO(b"3\tab\n"))
    task.finish()
    assert pairs == [("b", 3), ("b", 4), ("a", 2)] and task.stats.records == 3
    reducer = ReduceTask(job, spec, task=0, engine=None)
    reducer.add(pairs)
    assert reducer.run() == ["a\t2\n", "b\t7\n"]


def test_histogram_lookup_is_lazy_and_cached(tmp_path):
    class Engine:
        calls: list[str] = []

        def histogram_spec(self, *, revision, info):
            from telemetry_core.convert.spec import HistogramSpec

            self.calls.append(revision)
            return HistogramSpec({"H": {"kind": "linear", "low": 1, "high": 10, "n_buckets": 4, "description": "d"}})

    engine = Engine()
    lookup = HistogramLookup(engine)
    assert engine.calls == []
    payload = {"info": {"revision": "http://hg/r/rev/abc"}, "histograms": {"H": [1, 2, 3, 4, 0, -1, -1, -1, -1],
                                                                             "X": [1, 2, 3, 4, 5, 6]}}
    assert lookup.bounds(payload) == {"H": (0, 1, 6, 10)}
    assert lookup.bounds(payload) == {"H": (0, 1, 6, 10)}
    assert lookup.spec("http://hg/r/rev/abc") is lookup.spec(payload["info"])
    assert engine.calls == ["http://hg/r/rev/abc"]
    assert lookup.bounds({"info": {}, "histograms": {}}) == {}
    context = JobContext(write=print)
    from telemetry_core.reduce.histograms import telemetry_reduce_context

    telemetry_reduce_context(context=context, job=None)
    with pytest.raises(Exception, match="need an engine"):
        context.histogram_bounds(payload)
    json.dumps(payload)  # untouched
