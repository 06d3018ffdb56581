"""Processor throughput against the limit, worker scaling, and a compression table.

Run from the repository root::

    .venv/bin/python benchmarks/process.py [--records 1500] [--payload fixture|generated]
                                           [--workers 1,2,4] [--files 10] [--table]

1. **Limit, processor, workers, side by side.** ``--records`` submissions
   (``fixture``: the real 77 KB telemetry1.log Firefox ping, gzip as sent,
   with distinct ids -- issue #15's measure; ``generated``: payloads across
   the three fixture revisions from ``benchmarks/convert.py``) are
   processed by :class:`telemetry_core.store.process.processor.Processor`
   with the default configuration (SQLite dedup, the default codec at its
   default level), and with dedup off.  The limit, timed in the same run on
   the same records, is gzip inflate + ``orjson.loads`` + ``orjson.dumps``
   of each body plus the default codec compressing the output.  Each figure
   is CPU time (best of ``--repeat``), so other load on the box does not
   count; ratio = processor / limit (issue #15 target: 0.8).
   Then ``--files`` spool files are drained by 1, 2, 4 ... worker processes
   at once (``--workers``); printed: wall-clock records/s, the speed-up over
   one worker, and records per CPU-second of each worker (equal to one
   worker's when nothing is shared but the cores).
2. **Compression table** (``--table``) on realistic converted (v2) data:
   every codec and a range of levels, MB/s (of input) and compressed size,
   as the original project's CompressionBenchmarks did.

Not a test: nothing passes or fails.
"""

from __future__ import annotations

import argparse
import gzip
import io
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from telemetry_core.compress.codecs_builtin import GzipCodec, XzCodec, ZstdCodec  # noqa: E402
from telemetry_core.store.process.processor import Processor  # noqa: E402
from telemetry_core.store.spool.files import SpoolWriter  # noqa: E402

from convert import build_inputs  # noqa: E402
from process_helpers import DIMS_PATH, FIXTURE_PING, uuid  # noqa: E402
from telemetry_core.config.loader import read_config  # noqa: E402
from telemetry_core.engine import Engine  # noqa: E402
from telemetry_core.plugins import load_plugins, make_plugin_manager  # noqa: E402


def default_engine(data_dir: Path, overrides: list[str] = ()) -> Engine:
    """An engine with the built-ins and the default configuration (the codec included)."""
    pm = make_plugin_manager()
    load_plugins(pm, entry_points=False)
    assignments = [f"data_dir={data_dir}", "node_id=n1", "process.retry_backoff=0",
                   f"convert.histograms.cache_dir={data_dir / 'hc'}", *overrides]
    return Engine.from_plugin_manager(pm, read_config(None, assignments))


def realistic_bodies(generated: int) -> list[bytes]:
    """gzip bodies of the fixture ping and generated payloads; every revision is one the seeded cache has."""
    bodies = []
    for body, _spec in build_inputs(generated, seed=7):
        payload = orjson.loads(body)
        payload["info"]["revision"] = payload["info"]["revision"].replace("mozilla-aurora", "mozilla-release")
        bodies.append(gzip.compress(orjson.dumps(payload), 6))
    return bodies


def spool_of(data_dir: Path, count: int, bodies: list[bytes], files: int = 1, start: int = 0) -> None:
    per_file = -(-count // files)
    for first in range(0, count, per_file):
        writer = SpoolWriter(data_dir / "spool", "n1", max_file_bytes=1 << 40)
        for index in range(first, min(count, first + per_file)):
            writer.append(f"{uuid(start + index)}/{DIMS_PATH}", bodies[index % len(bodies)],
                          timestamp_ms=1378822911255)
        writer.close()


def time_pipeline(count: int, bodies: list[bytes], overrides: list[str]) -> float:
    """CPU seconds of one processor draining one spool file of ``count`` records."""
    root = Path(tempfile.mkdtemp(prefix="bench-process-"))
    try:
        spool_of(root, count, bodies)
        processor = Processor(default_engine(root, overrides))
        start = time.process_time()
        summary = processor.run_once()
        elapsed = time.process_time() - start
        processor.close()
        assert summary.records_valid == count, summary
        return elapsed
    finally:
        shutil.rmtree(root, ignore_errors=True)


def time_limit(count: int, bodies: list[bytes]) -> float:
    """CPU seconds of inflate + loads + dumps + the default codec at its default level."""
    root = Path(tempfile.mkdtemp(prefix="bench-limit-"))
    try:
        engine = default_engine(root)
        codec, level = engine.codec(name=engine.config.get("compress.codec")), engine.config.get("compress.level")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    start = time.process_time()
    out = io.BytesIO()
    for index in range(count):
        payload = orjson.loads(gzip.decompress(bodies[index % len(bodies)]))
        out.write(uuid(index).encode() + b"\t" + orjson.dumps(payload) + b"\n")
    codec.compress(io.BytesIO(out.getvalue()), io.BytesIO(), level)
    return time.process_time() - start


def _worker(root: str, barrier: object, results: object) -> None:
    processor = Processor(default_engine(Path(root)))
    barrier.wait()  # type: ignore[attr-defined]
    cpu, wall = time.process_time(), time.perf_counter()
    summary = processor.run_once()
    wall_end, cpu = time.perf_counter(), time.process_time() - cpu
    processor.close()
    results.put((wall, wall_end, summary.records_valid, cpu))  # type: ignore[attr-defined]


def time_workers(workers: int, count: int, files: int, bodies: list[bytes]) -> tuple[float, list[float]]:
    """Wall-clock records/s of ``workers`` processes draining ``files`` spool files, and each
    worker's records per CPU-second."""
    root = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    try:
        spool_of(root, count, bodies, files=files)
        context = multiprocessing.get_context("spawn")
        barrier, results = context.Barrier(workers), context.Queue()
        processes = [context.Process(target=_worker, args=(str(root), barrier, results)) for _ in range(workers)]
        for process in processes:
            process.start()
        done = [results.get(timeout=600) for _ in processes]
        for process in processes:
            process.join()
        assert sum(records for _, _, records, _ in done) == count, done
        wall = max(end for _, end, _, _ in done) - min(start for start, _, _, _ in done)
        return count / wall, [records / cpu for _, _, records, cpu in done if records]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def converted_lines(count: int, bodies: list[bytes]) -> bytes:
    root = Path(tempfile.mkdtemp(prefix="bench-lines-"))
    try:
        spool_of(root, count, bodies)
        Processor(default_engine(root, ["dedup.backend=none", "compress.codec=gzip"])).run_once()
        published = next(p for p in (root / "archive").rglob("*.gz") if "_invalid" not in p.parts)
        return gzip.decompress(published.read_bytes())
    finally:
        shutil.rmtree(root, ignore_errors=True)


def compression_table(data: bytes, repeat: int) -> None:
    codecs = [(XzCodec(), (0, 1)), (GzipCodec(), (1, 6)), (ZstdCodec(), (1, 3, 6, 9, 12))]
    print(f"\ncompression of {len(data) / 1e6:.1f} MB of converted v2 lines")
    print(f"{'codec':6} {'level':>5} {'MB/s':>8} {'size MB':>8} {'ratio':>6} {'read MB/s':>9}")
    for codec, levels in codecs:
        for level in levels:
            best, packed = float("inf"), b""
            for _ in range(repeat):
                out = io.BytesIO()
                start = time.process_time()
                codec.compress(io.BytesIO(data), out, level)
                best = min(best, time.process_time() - start)
                packed = out.getvalue()
            start = time.process_time()
            codec.open_reader(io.BytesIO(packed)).read()
            read = time.process_time() - start
            print(f"{codec.name:6} {level:>5} {len(data) / best / 1e6:8.1f} {len(packed) / 1e6:8.2f} "
                  f"{len(data) / len(packed):6.1f} {len(data) / read / 1e6:9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--payload", choices=("fixture", "generated"), default="fixture")
    parser.add_argument("--generated", type=int, default=334,
                        help="generated payloads per revision (distinct data keeps the compression table honest)")
    parser.add_argument("--workers", default="1,2,4", help="worker counts to compare ('' for none)")
    parser.add_argument("--files", type=int, default=10, help="spool files for the worker comparison")
    parser.add_argument("--table", action="store_true", help="also print the compression table")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    bodies = [FIXTURE_PING.body] if args.payload == "fixture" else realistic_bodies(args.generated)
    mean = sum(len(b) for b in bodies) / len(bodies)
    print(f"{args.records} records, {len(bodies)} distinct payloads of {mean / 1024:.1f} KiB gzip on average, "
          f"{os.cpu_count()} CPUs; CPU time, best of {args.repeat}")
    limit = min(time_limit(args.records, bodies) for _ in range(args.repeat))
    print(f"limit (inflate + orjson loads/dumps + default codec): {args.records / limit:6.0f} records/s")
    for label, overrides in (("default config", []), ("dedup off", ["dedup.backend=none"])):
        pipeline = min(time_pipeline(args.records, bodies, overrides) for _ in range(args.repeat))
        print(f"processor, {label:14}:                     {args.records / pipeline:6.0f} records/s   "
              f"ratio {limit / pipeline:.2f}")
    one = None
    for workers in [int(n) for n in args.workers.split(",") if n]:
        rate, per_cpu = time_workers(workers, args.records * 2, args.files, bodies)
        one = one or rate
        print(f"{workers} worker(s), {args.files} spool files: {rate:6.0f} records/s wall, {rate / one:.2f}x one "
              f"worker; records per CPU-second of each: {', '.join(f'{r:.0f}' for r in per_cpu)}")
    if args.table:
        compression_table(converted_lines(min(args.records, 1000), realistic_bodies(args.generated)), args.repeat)


if __name__ == "__main__":
    main()
