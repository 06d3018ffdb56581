"""Processor throughput against the limit, and a compression table.

Run from the repository root::

    .venv/bin/python benchmarks/process.py [--records 2000] [--cpu 0]

1. **Pipeline vs limit.** One spool file of ``--records`` realistic
   submissions (the telemetry1.log fixture ping and payloads generated
   across the three fixture revisions by ``benchmarks/convert.py``, gzip as
   Firefox sends them, with distinct ids) is processed by
   :class:`telemetry_core.store.process.processor.Processor`
   (inflate, decode, convert with the seeded AURORA_23 spec, serialize,
   write, compress with the configured codec, publish to the local
   archive, manifest). The limit, timed in the same run on the same
   records, is ``orjson.loads`` + ``orjson.dumps`` of each inflated body plus
   the codec compressing the same output bytes. Printed: records/s of both
   and the ratio (target: at least 0.5 on one core), with dedup off and with
   the default SQLite dedup.
2. **Compression table** on realistic converted (v2) data: every codec and
   a range of levels, MB/s (of input) and compressed size, as the original
   project's CompressionBenchmarks did.

Each measurement is the best of ``--repeat`` runs. Not a test: nothing
passes or fails.
"""

from __future__ import annotations

import argparse
import gzip
import io
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
from process_helpers import DIMS_PATH, processor_engine, uuid  # noqa: E402


def realistic_bodies(generated: int) -> list[bytes]:
    """gzip bodies of the fixture ping and generated payloads; every revision is one the seeded cache has."""
    bodies = []
    for body, _spec in build_inputs(generated, seed=7):
        payload = orjson.loads(body)
        payload["info"]["revision"] = payload["info"]["revision"].replace("mozilla-aurora", "mozilla-release")
        bodies.append(gzip.compress(orjson.dumps(payload), 6))
    return bodies


def spool_of(data_dir: Path, count: int, bodies: list[bytes]) -> None:
    writer = SpoolWriter(data_dir / "spool", "n1", max_file_bytes=1 << 40)
    for index in range(count):
        writer.append(f"{uuid(index)}/{DIMS_PATH}", bodies[index % len(bodies)], timestamp_ms=1378822911255)
    writer.close()


def time_pipeline(count: int, bodies: list[bytes], dedup: str) -> float:
    root = Path(tempfile.mkdtemp(prefix="bench-process-"))
    try:
        spool_of(root, count, bodies)
        processor = Processor(processor_engine(root, overrides=[f"dedup.backend={dedup}",
                                                                f"convert.histograms.cache_dir={root / 'hc'}"]))
        start = time.perf_counter()
        summary = processor.run_once()
        elapsed = time.perf_counter() - start
        assert summary.records_valid == count, summary
        return elapsed
    finally:
        shutil.rmtree(root, ignore_errors=True)


def time_limit(count: int, bodies: list[bytes]) -> float:
    inflated = [gzip.decompress(body) for body in bodies]
    start = time.perf_counter()
    out = io.BytesIO()
    for index in range(count):
        out.write(uuid(index).encode() + b"\t" + orjson.dumps(orjson.loads(inflated[index % len(inflated)])) + b"\n")
    XzCodec().compress(io.BytesIO(out.getvalue()), io.BytesIO(), 0)
    return time.perf_counter() - start


def converted_lines(count: int, bodies: list[bytes]) -> bytes:
    root = Path(tempfile.mkdtemp(prefix="bench-lines-"))
    try:
        spool_of(root, count, bodies)
        Processor(processor_engine(root, overrides=["dedup.backend=none", "compress.codec=gzip",
                                                    f"convert.histograms.cache_dir={root / 'hc'}"])).run_once()
        published = next(p for p in (root / "archive").rglob("*.gz") if "_invalid" not in p.parts)
        return gzip.decompress(published.read_bytes())
    finally:
        shutil.rmtree(root, ignore_errors=True)


def compression_table(data: bytes, repeat: int) -> None:
    codecs = [(XzCodec(), (0, 1, 3, 6, 9)), (GzipCodec(), (1, 6, 9))]
    try:
        codecs.append((ZstdCodec(), (1, 3, 9, 19)))
    except ImportError:
        print("(zstd: zstandard is not installed; pip install 'telemetry-core[zstd]')")
    print(f"\ncompression of {len(data) / 1e6:.1f} MB of converted v2 lines")
    print(f"{'codec':6} {'level':>5} {'MB/s':>8} {'size MB':>8} {'ratio':>6} {'read MB/s':>9}")
    for codec, levels in codecs:
        for level in levels:
            best, packed = float("inf"), b""
            for _ in range(repeat):
                out = io.BytesIO()
                start = time.perf_counter()
                codec.compress(io.BytesIO(data), out, level)
                best = min(best, time.perf_counter() - start)
                packed = out.getvalue()
            start = time.perf_counter()
            codec.open_reader(io.BytesIO(packed)).read()
            read = time.perf_counter() - start
            print(f"{codec.name:6} {level:>5} {len(data) / best / 1e6:8.1f} {len(packed) / 1e6:8.2f} "
                  f"{len(data) / len(packed):6.1f} {len(data) / read / 1e6:9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--generated", type=int, default=334,
                        help="generated payloads per revision (distinct data keeps the compression table honest)")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    bodies = realistic_bodies(args.generated)
    limit = min(time_limit(args.records, bodies) for _ in range(args.repeat))
    mean = sum(len(b) for b in bodies) / len(bodies)
    print(f"{args.records} records, {len(bodies)} distinct payloads of {mean / 1024:.1f} KiB gzip on average")
    print(f"limit (orjson loads+dumps + xz -0): {args.records / limit:8.0f} records/s")
    for dedup in ("none", "sqlite"):
        pipeline = min(time_pipeline(args.records, bodies, dedup) for _ in range(args.repeat))
        print(f"processor, dedup {dedup:6}:             {args.records / pipeline:8.0f} records/s   "
              f"ratio {limit / pipeline:.2f}")
    compression_table(converted_lines(min(args.records, 1000), bodies), args.repeat)


if __name__ == "__main__":
    main()
