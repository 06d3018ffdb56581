"""MapReduce with the local executor on a local archive made by the real processor.

Every answer is checked against counts computed from the generated pings
(tests/mapreduce_helpers.py), never against the pipeline's own code.
"""

from __future__ import annotations

import json
import lzma
import os
import pty
import select
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from mapreduce_helpers import (DAYS, FILTERS, HISTOGRAM, JOBS, TEST_REVISION, archive_files, as_ints, build_dataset,
                               read_output)
from telemetry_core.reduce.inputs import ArchiveInput
from telemetry_core.reduce.filters import DimensionFilter
from telemetry_core.reduce.local import ExecutorError
from telemetry_core.reduce.runner import run_job
from telemetry_core.reduce.tasks import JobAborted
from telemetry_core.store.local import LocalArchive

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("mapreduce"))


@pytest.fixture
def engine(dataset):
    return dataset.engine()


def run(engine, dataset, tmp_path, job: str, filter_name: str = "all.json", **options):
    output = tmp_path / f"{job}.out"
    stats = run_job(engine, job_path=JOBS / f"{job}.py" if "/" not in job else job,
                    filter_path=FILTERS / filter_name if "/" not in filter_name else filter_name,
                    output=output, **options)
    return stats, output


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize("job, expected", [
    ("count_by_day", lambda d: d.count_by_day()),
    ("dimensions", lambda d: d.dimensions()),
    ("os_distribution", lambda d: d.os_distribution()),
    ("histogram_aggregate", lambda d: d.histogram_totals()),
])
def test_example_jobs_give_the_independently_computed_answers(dataset, engine, tmp_path, job, expected):
    stats, output = run(engine, dataset, tmp_path, job, mappers=2, reducers=3)
    assert as_ints(read_output(output)) == expected(dataset)
    assert stats["errors"] == 0 and stats["bad_lines"] == 0
    assert stats["records"] == len(dataset.stored())
    assert stats["files"] == stats["listed"] > 10
    # every mapper x reducer file existed, empty or not
    assert sorted((m, r) for m, r, _ in stats["partition_files"]) == [(m, r) for m in range(2) for r in range(3)]


def test_histograms_are_labelled_with_each_records_own_revision(dataset, engine, tmp_path):
    """HISTOGRAM has 11 linear buckets in the test revision and 50 exponential ones in the real one;
    bounds that exist in only one layout must carry exactly that revision's counts."""
    _, output = run(engine, dataset, tmp_path, "histogram_aggregate", mappers=2)
    got = as_ints(read_output(output))
    real_bounds = set(dataset.specs[[r for r in dataset.specs if r != TEST_REVISION][0]].bounds(HISTOGRAM))
    test_bounds = set(dataset.specs[TEST_REVISION].bounds(HISTOGRAM))
    only_test = test_bounds - real_bounds
    assert only_test
    expected_test_only = dataset.histogram_totals([p for p in dataset.stored() if p.revision == TEST_REVISION])
    for bound in only_test:
        key = f"{HISTOGRAM}[{bound}]"
        assert got.get(key, 0) == expected_test_only.get(key, 0)
    assert any(got.get(f"{HISTOGRAM}[{bound}]") for bound in only_test)


def test_output_does_not_depend_on_mappers_or_reducers(dataset, engine, tmp_path):
    _, one = run(engine, dataset, tmp_path / "a", "dimensions", mappers=1, reducers=1)
    _, many = run(engine, dataset, tmp_path / "b", "dimensions", mappers=3, reducers=4)
    assert one.read_bytes() == many.read_bytes()
    lines = one.read_text().splitlines()
    assert lines == sorted(lines)


def test_filters_select_partitions(dataset, engine, tmp_path):
    stats, output = run(engine, dataset, tmp_path, "count_by_day", "saved_session_prerelease.json")
    wanted = [p for p in dataset.stored() if p.reason == "saved-session" and p.channel in ("nightly", "aurora", "beta")]
    assert as_ints(read_output(output)) == dataset.count_by_day(wanted)
    assert stats["records"] == len(wanted)

    _, output = run(engine, dataset, tmp_path, "count_by_day", "min_buildid.json")
    wanted = [p for p in dataset.stored() if p.channel in ("nightly", "aurora") and p.build >= "20130600"]
    assert as_ints(read_output(output)) == dataset.count_by_day(wanted)

    one_day = tmp_path / "one_day.json"
    one_day.write_text(json.dumps({"version": 1, "dimensions": [
        {"field_name": "appUpdateChannel", "allowed_values": "release"},
        {"field_name": "submission_date", "allowed_values": {"min": DAYS[1], "max": DAYS[1]}}]}))
    _, output = run(engine, dataset, tmp_path, "dimensions", str(one_day))
    wanted = [p for p in dataset.stored() if p.channel == "release" and p.submission_date == DAYS[1]]
    assert as_ints(read_output(output)) == dataset.dimensions(wanted)


def test_include_invalid_reads_the_invalid_area(dataset, engine, tmp_path):
    stats, output = run(engine, dataset, tmp_path, "os_distribution", "include_invalid.json")
    broken = [p for p in dataset.pings if p.broken]
    assert stats["records"] == len(dataset.stored()) + len(broken)
    assert as_ints(read_output(output))["_invalid/UNKNOWN"] == len(broken)
    _, output = run(engine, dataset, tmp_path, "dimensions", "include_invalid.json")
    invalid = {k: v for k, v in as_ints(read_output(output)).items() if k.startswith("_invalid/")}
    assert invalid == {f"_invalid/corrupted_data/_invalid/_invalid/_invalid/{DAYS[1]}": len(broken)}


def test_dedup_skips_superseded_records(dataset, engine, tmp_path):
    stats, output = run(engine, dataset, tmp_path, "count_by_day", dedup=True)
    live = dataset.live()
    assert len(live) < len(dataset.stored())
    assert as_ints(read_output(output)) == dataset.count_by_day(live)
    assert stats["skipped"] == len(dataset.stored()) - len(live)
    assert stats["records"] == len(live)


# --------------------------------------------------------------------------- listing


class ListingSpy(LocalArchive):
    """The real local archive, recording what was listed."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: list[tuple[str, str]] = []

    def list(self, prefix):
        self.calls.append(("list", prefix))
        return super().list(prefix)

    def list_dirs(self, prefix):
        self.calls.append(("list_dirs", prefix))
        return super().list_dirs(prefix)


def test_filter_is_pushed_down_to_the_listing(dataset, engine, tmp_path):
    source = ArchiveInput(("local", str(dataset.archive)), engine.schema, engine)
    spy = source._publisher = ListingSpy(dataset.archive)
    flt = DimensionFilter.from_json({"dimensions": [
        {"field_name": "reason", "allowed_values": ["saved-session"]},
        {"field_name": "appUpdateChannel", "allowed_values": ["beta"]},
        {"field_name": "appBuildID", "allowed_values": ["20130814063812"]}]}, engine.schema)
    items = list(source.list(flt))
    expected = {p.dims() for p in dataset.stored()
                if p.reason == "saved-session" and p.channel == "beta" and p.build == "20130814063812"}
    assert {item.dims for item in items} == expected
    prefixes = [prefix for _, prefix in spy.calls]
    assert not any(prefix.startswith(("idle-daily/", "_")) for prefix in prefixes)
    assert not any("/nightly/" in prefix or "/release/" in prefix for prefix in prefixes)
    assert ("list", "saved-session/Firefox/beta/24.0/20130814063812.") in spy.calls
    assert not any(kind == "list" and prefix.endswith("/") for kind, prefix in spy.calls)


def test_original_server_archive_is_readable(tmp_path, engine):
    """The original telemetry-server's keys (``<build>.<date>.v2.log.<uuid>.lzma``, LZMA alone)."""
    archive = tmp_path / "original"
    for line in (FIXTURES / "converted_v2_lines__input_listing.txt").read_text().splitlines():
        key, name = line.split("\t")
        fixture = FIXTURES / ("converted_v2_lines__saved_session_nightly_" + name.split("-")[-1].split(".")[0]
                              + ".0a1.lzma")
        (archive / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fixture, archive / key)
    schema_names = engine.schema.names
    assert schema_names[0] == "reason"
    output = tmp_path / "out.txt"
    stats = run_job(engine, job_path=JOBS / "dimensions.py", filter_path=FILTERS / "all.json", output=output,
                    input_uri=archive.as_uri())
    assert stats["errors"] == 0
    assert as_ints(read_output(output)) == {
        "saved_session/Firefox/nightly/22.0a1/20130226031002/20131011": 1,
        "saved_session/Firefox/nightly/28.0a1/20131029030201/20131029": 4}  # 1 and 4 lines (xz -dc | wc -l)


# --------------------------------------------------------------------------- the race with deletion


def test_inputs_opened_before_the_mappers_start_survive_deletion(dataset, tmp_path):
    """A plugin deletes every input file when the first mapper starts; every record is still read,
    because the parent opened the files before forking the mappers."""
    archive = tmp_path / "archive"
    shutil.copytree(dataset.archive, archive)
    plugin = tmp_path / "deleter.py"
    plugin.write_text(textwrap.dedent(f"""
        import pathlib
        from telemetry_core import hookimpl

        @hookimpl
        def telemetry_reduce_context(context, job):
            if context.phase == "map":
                for path in pathlib.Path({str(archive)!r}).rglob("*.log.xz"):
                    path.unlink(missing_ok=True)
        """))
    engine = dataset.engine(f"plugins.load=[{plugin}]")
    output = tmp_path / "out.txt"
    stats = run_job(engine, job_path=JOBS / "count_by_day.py", filter_path=FILTERS / "all.json", output=output,
                    input_uri=str(archive), mappers=2)
    assert not list(archive.rglob("*.log.xz"))
    assert stats["errors"] == 0
    assert as_ints(read_output(output)) == dataset.count_by_day()


def test_no_work_files_are_left_behind(dataset, engine, tmp_path):
    before = set(archive_files(dataset.data_dir))
    run(engine, dataset, tmp_path, "count_by_day", mappers=2, reducers=2)
    after = set(archive_files(dataset.data_dir))
    assert after == before
    assert not list((dataset.data_dir / "mapreduce").iterdir())


def test_empty_selection_writes_an_empty_output(dataset, engine, tmp_path):
    nothing = tmp_path / "nothing.json"
    nothing.write_text('{"dimensions": [{"field_name": "reason", "allowed_values": ["no-such-reason"]}]}')
    stats, output = run(engine, dataset, tmp_path, "count_by_day", str(nothing))
    assert output.read_bytes() == b"" and stats["files"] == 0 and stats["errors"] == 0


# --------------------------------------------------------------------------- the job's errors


def write_job(tmp_path: Path, body: str, name: str = "job.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_errors_in_map_are_counted_per_file_with_tracebacks(dataset, engine, tmp_path):
    job = write_job(tmp_path, """
        import json

        def map(key, dims, value, context):
            if dims[2] == "beta":
                raise ValueError("no betas please")
            context.write(dims[-1], 1)

        def reduce(key, values, context):
            context.write(key, sum(values))
        """)
    stats, output = run(engine, dataset, tmp_path, str(job), mappers=2)
    betas = [p for p in dataset.stored() if p.channel == "beta"]
    assert stats["map_errors"] == len(betas)
    assert stats["errors"] == len(betas)
    beta_files = {k for k in stats["error_counts"]}
    assert beta_files and all("/beta/" in key for key in beta_files)
    assert sum(stats["error_counts"].values()) == len(betas)
    assert len(stats["tracebacks"]) == 5
    assert 'ValueError: no betas please' in stats["tracebacks"][0]
    assert f'File "{job}", line 6, in map' in stats["tracebacks"][0]
    assert "mapreduce_tasks.py" not in stats["tracebacks"][0]
    assert as_ints(read_output(output)) == dataset.count_by_day([p for p in dataset.stored() if p.channel != "beta"])


def test_fail_fast_stops_at_the_first_error(dataset, engine, tmp_path):
    job = write_job(tmp_path, """
        def map(key, dims, value, context):
            raise KeyError("boom")

        def reduce(key, values, context):
            pass
        """)
    started = time.monotonic()
    with pytest.raises(JobAborted, match=r"--fail-fast: map\(\) on record .* raised KeyError") as caught:
        run(engine, dataset, tmp_path, str(job), mappers=2, fail_fast=True)
    assert "Traceback" in str(caught.value) and time.monotonic() - started < 30
    assert not list((dataset.data_dir / "mapreduce").iterdir())


def test_errors_in_reduce_and_unpicklable_values_are_counted(dataset, engine, tmp_path):
    job = write_job(tmp_path, """
        def map(key, dims, value, context):
            context.write(dims[2], 1)
            if dims[2] == "nightly":
                context.write("gen", (x for x in ()))   # a generator cannot be pickled

        def reduce(key, values, context):
            if key == "beta":
                raise RuntimeError("reduce failed")
            context.write(key, sum(values))
        """)
    stats, output = run(engine, dataset, tmp_path, str(job), reducers=2)
    nightly = [p for p in dataset.stored() if p.channel == "nightly"]
    assert stats["reduce_errors"] == 1 and stats["error_counts"]["reduce:'beta'"] == 1
    assert stats["map_errors"] == len(nightly)
    got = as_ints(read_output(output))
    assert "beta" not in got and got["nightly"] == len(nightly)
    assert any("cannot be pickled" in text for text in stats["tracebacks"])


def test_a_mapper_that_dies_fails_the_job(dataset, engine, tmp_path):
    job = write_job(tmp_path, """
        import os

        def map(key, dims, value, context):
            os._exit(3)
        """)
    with pytest.raises(ExecutorError, match="died with exit code 3"):
        run(engine, dataset, tmp_path, str(job), mappers=2)
    assert not list((dataset.data_dir / "mapreduce").iterdir())


def test_setup_teardown_combine_and_identity_reduce(dataset, engine, tmp_path):
    job = write_job(tmp_path, """
        state = {}

        def setup(context):
            state["phase"] = context.phase

        def map(key, dims, value, context):
            context.write(state["phase"], 1)

        def combine(key, values, context):
            context.write(key, sum(values))

        def teardown(context):
            if context.phase == "map":
                context.write("teardown", 1)
        """)
    _, output = run(engine, dataset, tmp_path, str(job), mappers=2)
    lines = output.read_text().splitlines()
    assert lines == sorted(lines)
    assert sorted(lines) == sorted([f"map\t{len(dataset.stored())}", "teardown\t2"])


# --------------------------------------------------------------------------- hostile inputs


def xz(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, preset=0)


def test_corrupt_truncated_and_malformed_files_are_counted(tmp_path, engine):
    archive = tmp_path / "archive"
    directory = archive / "idle-daily" / "Firefox" / "release" / "23.0.1"
    directory.mkdir(parents=True)
    good = b"".join(b"%08d-0000-4000-8000-000000000000\t{\"n\": %d}\n" % (i, i) for i in range(100))
    (directory / "20130814063812.20130910.n1.1.log.xz").write_bytes(xz(good))
    (directory / "20130814063812.20130911.n1.2.log.xz").write_bytes(b"\xfd7zXZ\x00 this is not xz at all" * 10)
    big = b"".join(b"%08d-0000-4000-8000-000000000000\t{\"n\": \"%s\"}\n" % (i, os.urandom(40).hex().encode())
                   for i in range(5000))
    compressed = xz(big)
    (directory / "20130814063812.20130912.n1.3.log.xz").write_bytes(compressed[: len(compressed) // 2])
    bad = b"no tab on this line\n" + b"\xff\xfe\tnot utf-8\n" + b"id\t\xff\xfe\n" + good.split(b"\n")[0] + b"\n"
    (directory / "20130814063812.20130913.n1.4.log.xz").write_bytes(xz(bad))
    (directory / "20130814063812.20130914.n1.5.log.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    (directory / "20130814063812.20130915.n1.6.log.bz2").write_bytes(b"BZh9")
    (directory / "README.txt").write_text("not a log file")
    (directory / "20130814063812.20130916.n1.7.log.xz").write_bytes(b"")
    output = tmp_path / "out.txt"
    stats = run_job(engine, job_path=JOBS / "count_by_day.py", filter_path=FILTERS / "all.json", output=output,
                    input_uri=str(archive), mappers=2)
    errors = stats["file_errors"]
    assert set(errors) == {f"idle-daily/Firefox/release/23.0.1/20130814063812.{name}" for name in (
        "20130911.n1.2.log.xz", "20130912.n1.3.log.xz", "20130914.n1.5.log.gz", "20130915.n1.6.log.bz2",
        "20130916.n1.7.log.xz")}  # an empty file is not xz either
    assert "LZMAError" in errors["idle-daily/Firefox/release/23.0.1/20130814063812.20130911.n1.2.log.xz"]
    assert "EOFError" in errors["idle-daily/Firefox/release/23.0.1/20130814063812.20130912.n1.3.log.xz"]
    assert "no codec reads .bz2" in errors["idle-daily/Firefox/release/23.0.1/20130814063812.20130915.n1.6.log.bz2"]
    assert stats["bad_lines"] == 3
    got = as_ints(read_output(output))
    assert got["20130910"] == 100 and got["20130913"] == 1
    assert 0 < got["20130912"] < 5000  # records read before the truncation count
    assert stats["errors"] == 5 and stats["files"] == 7


# --------------------------------------------------------------------------- the command


def cli_args(dataset, output: Path, *more: str) -> list[str]:
    sets = [arg for override in dataset.overrides() for arg in ("--set", override)]
    return ["mapreduce", "--job", str(JOBS / "count_by_day.py"), "--filter", str(FILTERS / "all.json"),
            "--output", str(output), *sets, *more]


def test_command_runs_a_job_and_keeps_pipes_clean(dataset, telemetry_cli, tmp_path):
    output = tmp_path / "out.txt"
    result = subprocess.run([*telemetry_cli, *cli_args(dataset, output, "--set", "reduce.progress=true", "--json")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert as_ints(read_output(output)) == dataset.count_by_day()
    stats = json.loads(result.stdout)
    assert stats["records"] == len(dataset.stored()) and stats["errors"] == 0
    assert f"{len(dataset.stored())} records" in result.stderr
    assert "mapping" not in result.stderr and "\r" not in result.stderr and "rec/s" not in result.stderr


def test_progress_bar_shows_on_a_terminal(dataset, telemetry_cli, tmp_path):
    output = tmp_path / "out.txt"
    primary, secondary = pty.openpty()
    process = subprocess.Popen([*telemetry_cli, *cli_args(dataset, output, "--set", "reduce.progress=true")],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary)
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 1.0)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    process.wait(timeout=60)
    os.close(primary)
    text = seen.decode(errors="replace")
    assert process.returncode == 0, text
    files = [p for p in archive_files(dataset.archive) if not p.relative_to(dataset.archive).parts[0].startswith("_")]
    assert "mapping" in text and "100%" in text
    assert f"{len(files)}/{len(files)} files" in text
    assert f"{len(dataset.stored())} records" in text and "rec/s" in text


def test_command_reports_failures_with_exit_codes(dataset, telemetry_cli, tmp_path):
    output = tmp_path / "out.txt"
    bad_filter = tmp_path / "bad.json"
    bad_filter.write_text('{"dimensions": [{"field_name": "colour", "allowed_values": "*"}]}')
    args = cli_args(dataset, output)
    args[args.index("--filter") + 1] = str(bad_filter)
    result = subprocess.run([*telemetry_cli, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "error: filter" in result.stderr and "'colour' is not a dimension of the schema" in result.stderr

    job = write_job(tmp_path, """
        def map(key, dims, value, context):
            if dims[2] == "beta":
                1 / 0
            context.write(dims[-1], 1)
        """)
    args = cli_args(dataset, output)
    args[args.index("--job") + 1] = str(job)
    result = subprocess.run([*telemetry_cli, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "error: the job's code raised" in result.stderr and "ZeroDivisionError" in result.stderr

    result = subprocess.run([*telemetry_cli, *args, "--fail-fast"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "error: --fail-fast: map() on record" in result.stderr

    missing = cli_args(dataset, output)
    missing[missing.index("--job") + 1] = str(tmp_path / "missing.py")
    result = subprocess.run([*telemetry_cli, *missing], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_spec_lookup_only_when_a_job_asks(dataset, tmp_path):
    calls = tmp_path / "calls"
    plugin = tmp_path / "spy.py"
    plugin.write_text(textwrap.dedent(f"""
        from telemetry_core import hookimpl

        @hookimpl(tryfirst=True)
        def telemetry_convert_histogram_spec(revision, info, engine):
            with open({str(calls)!r}, "a") as out:
                out.write(str(revision) + "\\n")
            return None
        """))
    engine = dataset.engine(f"plugins.load=[{plugin}]")
    run(engine, dataset, tmp_path, "count_by_day", mappers=2)
    assert not calls.exists()
    run(engine, dataset, tmp_path, "histogram_aggregate", mappers=2)
    looked_up = calls.read_text().splitlines()
    assert set(looked_up) == {p.revision for p in dataset.stored()}
    assert len(looked_up) <= 2 * len(set(looked_up))  # once per revision per mapper
