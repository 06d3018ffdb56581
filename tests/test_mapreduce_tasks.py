"""The task functions that executors run in other processes (forked mappers and reducers,
Spark's Python workers), called here in this process on a small real archive, and the
command through click's runner."""

from __future__ import annotations

import lzma
import queue
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from telemetry_core.cli import cli
from telemetry_core.engine import Engine
from telemetry_core.interfaces import JobSpec
from telemetry_core.reduce.command import summary_lines
from telemetry_core.reduce.filters import DimensionFilter
from telemetry_core.reduce.job import load_job
from telemetry_core.reduce.local import (PartitionWriter, _mapper_main, _reducer_main, merge_sorted,
                                            open_in_parent, read_partition)
from telemetry_core.reduce.spark import SparkPayload, StatsParam, _spark_map, _spark_reduce, _translate
from telemetry_core.reduce.tasks import JobAborted, TaskStats

LINES = {"20130910": 30, "20130911": 20}


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    directory = root / "saved-session" / "Firefox" / "nightly" / "26.0a1"
    directory.mkdir(parents=True)
    for number, (day, count) in enumerate(LINES.items()):
        lines = b"".join(b"%08x-0000-4000-8000-%012x\t{\"day\": \"%s\"}\n" % (i, i, day.encode())
                         for i in range(count))
        (directory / f"20130910030205.{day}.n1.{number}.log.xz").write_bytes(lzma.compress(lines, preset=0))
    return root


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine.from_config(None, [f"data_dir={tmp_path / 'data'}", "node_id=n1", "metrics.snapshot=false",
                                     "reduce.progress=false"], configure_logs=False)


def job_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(body))
    return path


COUNT = """
    def map(key, dims, value, context):
        context.write(dims[-1], 1)

    def combine(key, values, context):
        context.write(key, sum(values))

    def reduce(key, values, context):
        context.write(key, sum(values))
    """


def setup_job(tmp_path, engine, archive, body=COUNT, **options):
    script = load_job(job_file(tmp_path, body))
    source = engine.reduce_input(uri=str(archive))
    flt = DimensionFilter.everything(engine.schema)
    job = JobSpec(job_path=script.path, filter=flt, output=str(tmp_path / "out.txt"), input_uri=str(archive),
                  config_origin=engine.origin, **options)
    return script, source, job, list(source.list(flt))


def drain(events: queue.Queue) -> list[tuple]:
    found = []
    while not events.empty():
        found.append(events.get_nowait())
    return found


def test_mapper_and_reducer_functions(tmp_path, engine, archive):
    script, source, job, items = setup_job(tmp_path, engine, archive)
    work = tmp_path / "work"
    work.mkdir()
    events: queue.Queue = queue.Queue()
    handles = open_in_parent(items, source)
    assert set(handles) == {item.key for item in items}
    _mapper_main(0, items, handles, work, 2, script, job, [], source, engine, events)
    found = drain(events)
    assert found[-1][:3] == ("done", "map", 0)
    assert sum(event[1] for event in found if event[0] == "progress") == len(items)
    assert sorted(p.name for p in work.iterdir()) == ["mapper_0_0", "mapper_0_1"]
    pairs = [pair for r in range(2) for pair in read_partition(work / f"mapper_0_{r}")]
    assert sorted(pairs) == sorted(LINES.items())  # combined in the mapper: one pair per day
    for reducer in range(2):
        _reducer_main(reducer, 1, work, script, job, engine, events)
        assert drain(events)[-1][:3] == ("done", "reduce", reducer)
    merge_sorted([work / "reducer_0", work / "reducer_1"], job.output)
    assert Path(job.output).read_text() == "".join(f"{day}\t{count}\n" for day, count in sorted(LINES.items()))


def test_mapper_function_reports_aborts_and_crashes(tmp_path, engine, archive):
    script, source, job, items = setup_job(tmp_path, engine, archive, body="""
        def map(key, dims, value, context):
            raise ValueError("x")
        """, fail_fast=True)
    events: queue.Queue = queue.Queue()
    _mapper_main(0, items, {}, tmp_path, 1, script, job, [], source, engine, events)
    event = drain(events)[-1]
    assert event[0] == "abort" and "--fail-fast: map() on record" in event[3]

    class Broken:
        def open(self, item):
            raise RuntimeError("a bug, not a read error")

    _mapper_main(1, items, {}, tmp_path, 1, script, job, [], Broken(), engine, events)
    event = drain(events)[-1]
    assert event[0] == "crash" and "RuntimeError: a bug" in event[3]
    _reducer_main(0, 5, tmp_path, script, job, engine, events)  # mapper files that do not exist
    assert drain(events)[-1][0] == "crash"


def test_partition_writer_drops_unpicklable_pairs(tmp_path):
    dropped = []
    writer = PartitionWriter(tmp_path, 0, 1, on_error=lambda key, exc: dropped.append(key))
    writer.write("ok", 1)
    writer.write("bad", lambda: None)
    writer.write("ok2", 2)
    writer.close()
    assert dropped == ["bad"]
    assert list(read_partition(tmp_path / "mapper_0_0")) == [("ok", 1), ("ok2", 2)]


def test_spark_task_functions(tmp_path, engine, archive):
    script, source, job, items = setup_job(tmp_path, engine, archive)
    payload = SparkPayload(job=job, script_path=script.path, script_source=script.source, source=source,
                           filters=None)

    class Accumulator:
        def __init__(self):
            self.value = TaskStats()

        def add(self, stats):
            StatsParam(5).addInPlace(self.value, stats)

    accumulator = Accumulator()
    pairs = list(_spark_map(payload, accumulator, iter([(0, items)])))
    assert sorted(pairs) == sorted(LINES.items())
    assert accumulator.value.records == sum(LINES.values()) and accumulator.value.files == len(items)
    (task,) = accumulator.value.tasks
    assert task["phase"] == "map" and sorted(task["opened"]) == sorted(item.key for item in items)
    out = list(_spark_reduce(payload, 0, iter(pairs)))
    assert [line for kind, _, line in out if kind == "L"] == [f"{d}\t{c}\n" for d, c in sorted(LINES.items())]
    assert out[-1][0] == "S" and out[-1][2].keys == len(LINES)


def test_spark_failures_are_translated():
    aborted = _translate(RuntimeError("py4j...\ntelemetry_core.mapreduce_tasks.JobAborted: --fail-fast: map() "
                                      "raised X\n\tat org.apache.spark.Foo"))
    assert isinstance(aborted, JobAborted) and str(aborted) == "--fail-fast: map() raised X"
    other = _translate(RuntimeError("An error occurred\n  File x\nModuleNotFoundError: No module named 'y'\n"
                                    "\tat java.lang.Thread"))
    assert "ModuleNotFoundError: No module named 'y'" in str(other)


def test_command_in_process(tmp_path, archive):
    filter_path = tmp_path / "all.json"
    filter_path.write_text('{"version": 1, "dimensions": []}')
    job = job_file(tmp_path, COUNT)
    output = tmp_path / "out.txt"
    base = ["mapreduce", "--job", str(job), "--filter", str(filter_path), "--input", str(archive), "--output",
            str(output), "--set", f"data_dir={tmp_path / 'data'}", "--set", "node_id=n1",
            "--set", "metrics.snapshot=false", "--mappers", "2", "--reducers", "2"]
    result = CliRunner().invoke(cli, [*base, "--json"])
    assert result.exit_code == 0, result.output
    assert output.read_text() == "".join(f"{d}\t{c}\n" for d, c in sorted(LINES.items()))
    assert '"records": 50' in result.output

    job_file(tmp_path, COUNT.replace("context.write(dims[-1], 1)", "1 / 0"))
    result = CliRunner().invoke(cli, base)
    assert result.exit_code == 1 and "ZeroDivisionError" in result.output, result.output

    result = CliRunner().invoke(cli, [*base, "--input", "ftp://nowhere"])
    assert result.exit_code == 2 and "no installed plugin reads input" in result.output


def test_summary_lines_name_every_problem():
    stats = {"files": 3, "bytes": 3 * 1024 * 1024, "records": 10, "seconds": 2.0, "executor": "local",
             "mappers": 2, "reducers": 1, "output": "o.txt", "lines": 4, "keys": 4, "skipped": 2, "bad_lines": 1,
             "file_errors": {"a.log.xz": "EOFError: truncated"}, "map_errors": 1, "reduce_errors": 0,
             "error_counts": {"b.log.xz": 1}, "tracebacks": ["map() on record x:\nTraceback ...\nValueError"]}
    text = "\n".join(summary_lines(stats))
    assert "3 files (3.0 MB), 10 records" in text and "dedup: 2 superseded" in text
    assert "warning: 1 lines" in text and "error: could not read a.log.xz: EOFError" in text
    assert "raised 1 times in map" in text and "  ValueError" in text
