"""Spool append throughput against a bare ``f.write(body)`` loop, per fsync policy.

Run from the repository root::

    .venv/bin/python benchmarks/spool.py [--records 20000] [--body-bytes 27000] [--gzip]

Bodies are the telemetry1.log fixture ping (a real Firefox 23 idle-daily
submission), each with a distinct id inside, trimmed (whole histograms
dropped) to about ``--body-bytes`` of JSON, optionally gzipped.  Every
record gets a fresh UUID path.  For each policy the script times
``SpoolWriter.append`` over all records (including rotations and the final
close) and a bare loop writing the same bodies to one file in the same
directory, in the same run, and prints the ratio.  The bare loop syncs as
the policy does (never; every second; after each body), so each ratio
measures the spool's own cost, not the disk's.  Runs alternate, each
starts after an ``os.sync()``, and the best of ``--repeat`` is reported.  Not a test: nothing passes or fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from telemetry_core.receive.bench import ping_bodies, read_ping  # noqa: E402
from telemetry_core.store.spool.files import FsyncPolicy, SpoolWriter  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "payload_v1_packed_log__telemetry1.log"
DIMENSIONS = "saved-session/Firefox/23.0.1/release/20130814063812"


def time_bare_writes(directory: Path, bodies: list[bytes], policy: FsyncPolicy) -> float:
    """Seconds to write every body with ``f.write``, syncing as ``policy`` would.

    ``none``: never; ``interval``: when a second has passed since the last
    sync, and at the end; ``always``: after each body.
    """
    target = directory / "bare.bin"
    os.sync()  # start clean: no write-back of an earlier run throttles this one
    started = last_sync = time.perf_counter()
    with open(target, "wb") as file:
        for body in bodies:
            file.write(body)
            if policy is FsyncPolicy.ALWAYS or (
                    policy is FsyncPolicy.INTERVAL and time.perf_counter() - last_sync >= 1.0):
                file.flush()
                os.fdatasync(file.fileno())
                last_sync = time.perf_counter()
        if policy is FsyncPolicy.INTERVAL:
            file.flush()
            os.fdatasync(file.fileno())
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def time_spool_appends(directory: Path, paths: list[str], bodies: list[bytes], policy: FsyncPolicy) -> float:
    """Seconds to append every record with a :class:`SpoolWriter`, closing it at the end."""
    spool_dir = directory / f"spool-{policy.value}"
    writer = SpoolWriter(spool_dir, "bench-node", fsync=policy, fsync_interval_ms=1000)
    os.sync()
    started = time.perf_counter()
    for path, body in zip(paths, bodies):
        writer.append(path, body, client_addr="192.0.2.10")
    writer.close()
    elapsed = time.perf_counter() - started
    shutil.rmtree(spool_dir)
    return elapsed


def best_of_interleaved(repeat: int, first, second) -> tuple[float, float]:
    """Best times of two runs, alternated so drifting machine state hits both alike."""
    times = [(first(), second()) for _ in range(repeat)]
    return min(t[0] for t in times), min(t[1] for t in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--always-records", type=int, default=2_000,
                        help="records for the 'always' policy (one sync each is slow)")
    parser.add_argument("--body-bytes", type=int, default=27_000)
    parser.add_argument("--gzip", action="store_true", help="gzip the bodies (as most clients do)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=REPO / "data" / "benchmarks",
                        help="where to write (use the disk the spool will live on)")
    args = parser.parse_args()

    pool = ping_bodies(read_ping(FIXTURE), 64, args.body_bytes, compress=args.gzip)
    args.dir.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=args.dir))
    mean_body = sum(map(len, pool)) / len(pool)
    print(f"python {sys.version.split()[0]}, {args.records} records, bodies {mean_body / 1000:.1f} kB mean "
          f"({'gzip' if args.gzip else 'plain JSON'}), writing to {directory}")
    print(f"{'policy':<9} {'records':>8} {'appends/s':>11} {'MB/s':>8} "
          f"{'bare writes/s':>14} {'bare MB/s':>10} {'ratio':>6}")
    try:
        for policy in FsyncPolicy:
            count = args.always_records if policy is FsyncPolicy.ALWAYS else args.records
            bodies = [pool[i % len(pool)] for i in range(count)]
            paths = [f"{uuid.uuid4()}/{DIMENSIONS}" for _ in range(count)]
            megabytes = sum(map(len, bodies)) / 1e6
            bare, spool = best_of_interleaved(
                args.repeat, lambda: time_bare_writes(directory, bodies, policy),
                lambda: time_spool_appends(directory, paths, bodies, policy))
            print(f"{policy.value:<9} {count:>8} {count / spool:>11,.0f} {megabytes / spool:>8.0f} "
                  f"{count / bare:>14,.0f} {megabytes / bare:>10.0f} {bare / spool:>6.2f}")
    finally:
        shutil.rmtree(directory)
    print("ratio = spool appends/s / bare writes/s; the bare loop syncs like the policy: never (none), "
          "every 1 s (interval), after each body (always)")


if __name__ == "__main__":
    main()
