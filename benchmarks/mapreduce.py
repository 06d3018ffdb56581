"""MapReduce throughput against the limit, mapper scaling, and Spark's local-mode overhead.

Run from the repository root::

    .venv/bin/python benchmarks/mapreduce.py [--records 6000] [--files 8] [--repeat 3] [--no-spark]

An archive of ``--records`` realistic records in ``--files`` files is made
by the real processor (the fixture ping and payloads generated across the
fixture revisions, as ``benchmarks/process.py`` makes them; xz -0, the
default).  Then, in the same run, on the same files:

1. **the limit**: a bare loop in this process that decompresses every file
   with the codec and splits each line at the tab (one core);
2. **local executor, 1 mapper**: ``telemetry mapreduce``'s engine (listing
   with the filter, forking, decoding, the job's ``map``, combine, the
   shuffle files, reduce, the output file) running a trivial counting job;
   records/s and the **ratio to the limit per core** (target: at least 0.7);
3. **local executor, 2 mappers**: the 1 -> 2 mapper scaling, next to the bare
   loop run in 2 processes (what this machine's cores give in parallel);
4. **spark executor, local[2], 2 map tasks**: the same job on Spark, with
   the session's start-up time reported apart from the job's.

Each timing is the best of ``--repeat`` interleaved rounds.  Not a test: nothing passes or fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from telemetry_core.compress.codecs_builtin import XzCodec  # noqa: E402
from telemetry_core.engine import Engine  # noqa: E402
from telemetry_core.reduce.runner import run_job  # noqa: E402
from telemetry_core.store.process.processor import Processor  # noqa: E402
from telemetry_core.store.spool.files import SpoolWriter  # noqa: E402

from process import realistic_bodies  # noqa: E402
from process_helpers import processor_engine, uuid  # noqa: E402

COUNT_JOB = '''
def map(key, dims, value, context):
    context.write("records", 1)

def combine(key, values, context):
    context.write(key, sum(values))

def reduce(key, values, context):
    context.write(key, sum(values))
'''
FILTER = '{"version": 1, "dimensions": []}'
CHANNELS = ("release", "beta", "aurora", "nightly")


def build_archive(root: Path, records: int, files: int, generated: int) -> Path:
    """``files`` spool files (one per channel and day), processed into the local archive."""
    bodies = realistic_bodies(generated)
    per_file = records // files
    for number in range(files):
        writer = SpoolWriter(root / "spool", "n1", max_file_bytes=1 << 40)
        channel = CHANNELS[number % len(CHANNELS)]
        for index in range(number * per_file, (number + 1) * per_file):
            path = f"{uuid(index)}/idle-daily/Firefox/23.0.1/{channel}/20130814063812"
            writer.append(path, bodies[index % len(bodies)], timestamp_ms=1378822911255 + number * 86_400_000)
        writer.close()
    processor = Processor(processor_engine(root, overrides=["dedup.backend=none",
                                                            f"convert.histograms.cache_dir={root / 'hc'}"]))
    summary = processor.run_once()
    processor.close()
    assert summary.records_valid == per_file * files, summary
    return root / "archive"


def bare_loop(archive: Path) -> tuple[int, float]:
    codec = XzCodec()
    paths = [p for p in archive.rglob("*.log.xz") if not p.relative_to(archive).parts[0].startswith("_")]
    start = time.perf_counter()
    records = 0
    for path in paths:
        with open(path, "rb") as raw, codec.open_reader(raw) as reader:
            for line in reader:
                line.split(b"\t", 1)
                records += 1
    return records, time.perf_counter() - start


def bare_parallel(archive: Path, processes: int) -> tuple[int, float]:
    """The bare loop over the same files split in ``processes`` forked processes: what this
    machine gives in parallel (the reference for the mapper scaling)."""
    import multiprocessing

    paths = sorted(p for p in archive.rglob("*.log.xz") if not p.relative_to(archive).parts[0].startswith("_"))
    groups = [paths[i::processes] for i in range(processes)]

    def run(group: list[Path]) -> None:
        codec = XzCodec()
        for path in group:
            with open(path, "rb") as raw, codec.open_reader(raw) as reader:
                for line in reader:
                    line.split(b"\t", 1)

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=run, args=(group,)) for group in groups]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return 0, time.perf_counter() - start


def timed_job(engine: Engine, root: Path, executor: str, mappers: int) -> tuple[int, float]:
    start = time.perf_counter()
    stats = run_job(engine, job_path=root / "count.py", filter_path=root / "filter.json", output=root / "out.txt",
                    executor=executor, mappers=mappers, reducers=1, progress=False)
    elapsed = time.perf_counter() - start
    assert stats["errors"] == 0, stats
    return stats["records"], elapsed


def best(function: Any, repeat: int) -> tuple[int, float]:
    runs = [function() for _ in range(repeat)]
    return runs[0][0], min(elapsed for _, elapsed in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=6000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--generated", type=int, default=100, help="generated payloads per revision")
    parser.add_argument("--no-spark", action="store_true", help="skip the Spark measurement")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-mapreduce-"))
    try:
        archive = build_archive(root / "data", args.records, args.files, args.generated)
        (root / "count.py").write_text(COUNT_JOB)
        (root / "filter.json").write_text(FILTER)
        size = sum(p.stat().st_size for p in archive.rglob("*.log.xz"))
        engine = Engine.from_config(None, [f"data_dir={root / 'data'}", "node_id=n1", "metrics.snapshot=false",
                                           "logging.level=WARNING"])
        measures = {"limit": lambda: bare_loop(archive), "one": lambda: timed_job(engine, root, "local", 1),
                    "two": lambda: timed_job(engine, root, "local", 2), "machine": lambda: bare_parallel(archive, 2)}
        timings: dict[str, float] = {}
        records = 0
        for _ in range(args.repeat):  # interleaved rounds: a burst of load elsewhere hits every measure alike
            for name, measure in measures.items():
                count, elapsed = measure()
                records = count or records
                timings[name] = min(timings.get(name, float("inf")), elapsed)
        limit, one, two, machine = (timings[name] for name in ("limit", "one", "two", "machine"))
        print(f"{records} records in {args.files} files, {size / 1e6:.1f} MB xz; {os.cpu_count()} cores")
        print(f"limit (bare loop: xz decompress + split, 1 core): {records / limit:9.0f} records/s")
        print(f"local executor, 1 mapper:                        {records / one:9.0f} records/s   "
              f"ratio to the limit per core {limit / one:.2f} (target >= 0.7)")
        print(f"local executor, 2 mappers:                       {records / two:9.0f} records/s   "
              f"scaling 1 -> 2 mappers {one / two:.2f}x (per core {limit / two / 2:.2f})")
        print(f"machine reference, bare loop in 2 processes:     {records / machine:9.0f} records/s   "
              f"scaling {limit / machine:.2f}x: what 2 cores give here")
        if not args.no_spark:
            spark_report(engine, root, records, two, args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def spark_report(engine: Engine, root: Path, records: int, local_two: float, repeat: int) -> None:
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        print("spark: pyspark is not installed (pip install 'telemetry-core[spark]')")
        return
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    start = time.perf_counter()
    session = (SparkSession.builder.master("local[2]").appName("bench").config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    started = time.perf_counter() - start
    try:
        first = timed_job(engine, root, "spark", 2)[1]
        spark = best(lambda: timed_job(engine, root, "spark", 2), repeat)[1]
    finally:
        session.stop()
    print(f"spark executor, local[2], 2 map tasks:           {records / spark:9.0f} records/s   "
          f"overhead vs local 2 mappers {spark - local_two:+.2f} s ({spark / local_two:.2f}x); "
          f"session start {started:.1f} s, first job {first:.1f} s (Python workers start)")


if __name__ == "__main__":
    main()
