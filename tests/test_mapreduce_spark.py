"""The spark executor (pyspark, local[2], one SparkSession for the module): the same
answers as the local executor, on local files and on S3, with the work done in Spark tasks."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from mapreduce_helpers import (FILTERS, JOBS, archive_files, as_ints, build_dataset, build_unified_dataset,
                               read_output)
from s3_helpers import direct_client, fake_aws_credentials, make_publisher, moto_endpoint  # noqa: F401
from telemetry_core.reduce.runner import run_job
from telemetry_core.reduce.tasks import JobAborted
from telemetry_core.store.local import sha256_of

pyspark = pytest.importorskip("pyspark", reason="pip install 'telemetry-core[spark]' to test the spark executor")

#: Files opened by this (the driver's) process while recording; an audit hook fills it.
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    with pytest.MonkeyPatch.context() as patch:
        # the Python workers inherit this environment (fake S3 credentials, this interpreter)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("PYSPARK_PYTHON", sys.executable)
        session = (SparkSession.builder.master("local[2]").appName("telemetry-tests")
                   .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
                   .config("spark.driver.memory", "1g").getOrCreate())
        session.sparkContext.setLogLevel("ERROR")
        yield session
        session.stop()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("mapreduce-spark"))


def both(engine, tmp_path, job: str, **options) -> tuple[Path, Path, dict, dict]:
    outputs = []
    for executor in ("local", "spark"):
        output = tmp_path / f"{job}.{executor}.txt"
        outputs.append((output, run_job(engine, job_path=JOBS / f"{job}.py" if "/" not in job else job,
                                        filter_path=FILTERS / "all.json", output=output, executor=executor,
                                        **options)))
    (local, local_stats), (spark_output, spark_stats) = outputs
    return local, spark_output, local_stats, spark_stats


@pytest.mark.parametrize("job, expected", [
    ("count_by_day", lambda d: d.count_by_day()),
    ("dimensions", lambda d: d.dimensions()),
    ("os_distribution", lambda d: d.os_distribution()),
    ("histogram_aggregate", lambda d: d.histogram_totals()),
])
def test_spark_gives_the_same_output_as_local(spark, dataset, tmp_path, job, expected):
    local, spark_output, _, stats = both(dataset.engine(), tmp_path, job, mappers=2, reducers=2)
    assert spark_output.read_bytes() == local.read_bytes()
    assert as_ints(read_output(spark_output)) == expected(dataset)
    assert stats["executor"] == "spark" and stats["errors"] == 0 and stats["records"] == len(dataset.stored())


def test_unified_ping_job_gives_the_same_output_on_spark(spark, tmp_path_factory, tmp_path):
    unified = build_unified_dataset(tmp_path_factory.mktemp("mapreduce-spark-unified"))
    local, spark_output, _, stats = both(unified.engine(), tmp_path, "unified_pings", mappers=2, reducers=2)
    assert spark_output.read_bytes() == local.read_bytes()
    assert as_ints(read_output(spark_output)) == unified.unified_counts()
    assert stats["executor"] == "spark" and stats["errors"] == 0 and stats["records"] == len(unified.pings)


def test_the_work_runs_in_spark_tasks_and_the_driver_opens_no_data_file(spark, dataset, tmp_path):
    global _OPENED
    engine = dataset.engine()
    _OPENED = []
    try:
        stats = run_job(engine, job_path=JOBS / "count_by_day.py", filter_path=FILTERS / "all.json",
                        output=tmp_path / "out.txt", executor="spark", mappers=3, reducers=2)
    finally:
        opened, _OPENED = _OPENED, None
    assert not [path for path in opened if ".log." in path and str(dataset.archive) in path]
    maps = [task for task in stats["tasks"] if task["phase"] == "map"]
    reduces = [task for task in stats["tasks"] if task["phase"] == "reduce"]
    assert len({task["attempt"] for task in maps}) == 3 and len(reduces) == 2
    assert all(task["pid"] != os.getpid() for task in stats["tasks"])
    data_files = {p.relative_to(dataset.archive).as_posix() for p in archive_files(dataset.archive)
                  if not p.relative_to(dataset.archive).parts[0].startswith("_")}
    assert sorted(key for task in maps for key in task["opened"]) == sorted(data_files)
    assert as_ints(read_output(tmp_path / "out.txt")) == dataset.count_by_day()


def test_spark_reads_s3_in_its_tasks(spark, dataset, moto_endpoint, tmp_path):  # noqa: F811
    bucket = "spark-archive"
    direct_client(moto_endpoint).create_bucket(Bucket=bucket)
    publisher = make_publisher(moto_endpoint, bucket, prefix="p/")
    for path in archive_files(dataset.archive):
        publisher.publish(str(path), path.relative_to(dataset.archive).as_posix(), checksum=sha256_of(path))
    engine = dataset.engine("store.publish.backend=s3", f"store.publish.bucket={bucket}", "store.publish.prefix=p/",
                            f"store.publish.endpoint_url={moto_endpoint}", data_dir=tmp_path / "node")
    for job, expected in (("histogram_aggregate", dataset.histogram_totals()),
                          ("count_by_day", dataset.count_by_day(dataset.live()))):
        output = tmp_path / f"{job}.txt"
        stats = run_job(engine, job_path=JOBS / f"{job}.py", filter_path=FILTERS / "all.json", output=output,
                        executor="spark", mappers=2, dedup=job == "count_by_day")
        assert stats["input"] == f"s3://{bucket}/p/" and stats["errors"] == 0
        assert as_ints(read_output(output)) == expected
    assert [p for p in (tmp_path / "node").rglob("*") if p.is_file() and "metrics" not in p.parts] == []


def test_errors_are_counted_alike_and_fail_fast_stops(spark, dataset, tmp_path):
    job = tmp_path / "flaky.py"
    job.write_text(textwrap.dedent("""
        def map(key, dims, value, context):
            if dims[2] == "beta":
                raise ValueError("no betas")
            context.write(dims[-1], 1)

        def reduce(key, values, context):
            context.write(key, sum(values))
        """))
    engine = dataset.engine()
    local, spark_output, local_stats, spark_stats = both(engine, tmp_path, str(job), mappers=2)
    assert spark_output.read_bytes() == local.read_bytes()
    betas = len([p for p in dataset.stored() if p.channel == "beta"])
    for stats in (local_stats, spark_stats):
        assert stats["map_errors"] == betas and sum(stats["error_counts"].values()) == betas
        assert len(stats["tracebacks"]) == 5 and "ValueError: no betas" in stats["tracebacks"][0]
    assert spark_stats["error_counts"] == local_stats["error_counts"]
    with pytest.raises(JobAborted, match=r"--fail-fast: map\(\) on record .* raised ValueError: no betas"):
        run_job(engine, job_path=job, filter_path=FILTERS / "all.json", output=tmp_path / "x.txt",
                executor="spark", fail_fast=True)
