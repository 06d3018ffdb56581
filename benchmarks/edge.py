"""Edge requests/s against a minimal aiohttp app that only reads and discards the same bodies.

Run from the repository root::

    .venv/bin/python benchmarks/edge.py [--duration 8] [--connections 32] [--body-bytes 27000] [--gzip]

Both servers run in this run, as subprocesses on loopback, and get the same
load from the same client (:mod:`telemetry_core.receive.bench`: keep-alive
connections, a fresh submission id and varied dimensions per request,
bodies made from the fixture ping, a real Firefox 23 submission, trimmed
to about ``--body-bytes`` of JSON):

* **baseline**: an aiohttp app with one POST route that awaits
  ``request.read()`` and answers ``OK`` (no access log);
* **edge**: ``telemetry serve`` with one worker, the built-in plugins,
  spooling on with the default fsync policy (``interval``, 1 s).

Each line also shows the server's CPU time per request (from /proc):
``loop`` for the main threads, which run the event loops, ``threads``
for the others (the edge's spool threads), so where the time goes is
visible run by run.

Runs alternate; the table shows the best of ``--repeat`` for each server,
and the ratio edge req/s / baseline req/s (issue 3's target: at least 0.6)
is printed both from those bests and as the median over back-to-back
pairs (less sensitive to other load on the machine).  Then the
edge runs with 2 workers, and the resident memory of each worker is read
from /proc.  The client shares the machine: its CPU use is printed so a
client-bound figure is visible as such.  Not a test: nothing passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from telemetry_core.receive.bench import LoadResult, generate_load, ping_bodies, read_ping  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "payload_v1_packed_log__telemetry1.log"
TELEMETRY = str(Path(sys.executable).parent / "telemetry")


def serve_baseline(port: int) -> None:
    """The minimal aiohttp app (run in a child process)."""
    from aiohttp import web

    async def submit(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="OK")

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/submit/telemetry/{rest:.*}", submit)
    app.router.add_get("/", lambda request: web.Response(text="ready"))
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def start_baseline(port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, __file__, "--baseline-server", str(port)])
    wait_until_up(port, process)
    return process


def start_edge(port: int, workers: int, data_dir: Path) -> subprocess.Popen:
    process = subprocess.Popen([TELEMETRY, "serve", "--set", f"data_dir={data_dir}", "--set", "node_id=bench",
                                "--set", f"receive.port={port}", "--set", f"receive.workers={workers}",
                                "--set", "logging.level=WARNING", "--set", "metrics.snapshot=false"],
                               stdout=subprocess.DEVNULL)
    wait_until_up(port, process)
    time.sleep(0.5 * workers)  # every worker listening, not only the first
    return process


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def thread_cpu(pids: list[int]) -> dict[str, float]:
    """CPU seconds used so far by ``pids``: their main threads (the event loops) as
    ``loop``, all their other threads (the spool threads, mostly) as ``threads``."""
    totals = {"loop": 0.0, "threads": 0.0}
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that ended meanwhile
            totals["loop" if task.name == str(pid) else "threads"] += (int(fields[11]) + int(fields[12])) / ticks
    return totals


def measure(port: int, bodies: list[bytes], args: argparse.Namespace,
            server_pids: list[int]) -> tuple[LoadResult, float, dict[str, float]]:
    """One load run: its result, the client's share of a core, and the server's CPU
    microseconds per request (see :func:`thread_cpu`)."""
    cpu = time.process_time()
    before = thread_cpu(server_pids)
    result = asyncio.run(generate_load("127.0.0.1", port, bodies=bodies, connections=args.connections,
                                       duration=args.duration, compress=args.gzip, batch=args.batch))
    after = thread_cpu(server_pids)
    per_request = {name: (after[name] - before.get(name, 0.0)) / max(result.requests, 1) * 1e6
                   for name in after if after[name] > before.get(name, 0.0)}
    return result, (time.process_time() - cpu) / result.seconds, per_request


def worker_pids(port: int) -> list[int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
        return [worker["pid"] for worker in json.load(response)["workers"].values()]


def worker_memory(port: int) -> list[tuple[int, int, int]]:
    """(pid, RSS KiB, PSS KiB) of every edge worker, pids from /status."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
        status = json.load(response)
    out = []
    for worker in status["workers"].values():
        pid = worker["pid"]
        rss = pss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        rollup = Path(f"/proc/{pid}/smaps_rollup")
        if rollup.exists():
            for line in rollup.read_text().splitlines():
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
        out.append((pid, rss, pss))
    return out


def describe(name: str, result: LoadResult, client_cpu: float, server_cpu: dict[str, float]) -> str:
    s = result.summary()
    errors = sum(result.errors.values())
    threads = ", ".join(f"{thread} {micros:.0f}" for thread, micros in
                        sorted(server_cpu.items(), key=lambda item: -item[1]) if micros >= 1)
    return (f"{name:<22} {s['requests_per_s']:>9,.0f} {s['mb_per_s']:>7.1f} {s['latency_ms']['p50']:>7.2f} "
            f"{s['latency_ms']['p95']:>7.2f} {s['latency_ms']['p99']:>7.2f} {s['latency_ms']['max']:>8.2f} "
            f"{errors:>6} {client_cpu:>9.0%}  {threads}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--body-bytes", type=int, default=27_000)
    parser.add_argument("--gzip", action="store_true", help="gzip the bodies (Content-Encoding: gzip)")
    parser.add_argument("--batch", type=int, default=0, help="records per request to batch_dims (0 = single)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=REPO / "data" / "benchmarks",
                        help="where the edge's data_dir goes (use the disk the spool will live on)")
    args = parser.parse_args()
    if args.baseline_server:
        serve_baseline(args.baseline_server)
        return

    bodies = ping_bodies(read_ping(FIXTURE), 64, args.body_bytes, compress=args.gzip)
    args.dir.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="edge-bench-", dir=args.dir))
    mean_body = sum(map(len, bodies)) / len(bodies)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {args.connections} connections, "
          f"{args.duration:g} s per run, best of {args.repeat}, bodies {mean_body / 1000:.1f} kB "
          f"({'gzip' if args.gzip else 'plain JSON'}){f', batches of {args.batch}' if args.batch else ''}")
    print(f"{'server':<22} {'req/s':>9} {'MB/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>8} "
          f"{'errors':>6} {'client CPU':>9}  server CPU us/request")
    baseline_port, edge_port = free_port(), free_port()
    baseline = start_baseline(baseline_port)
    edge = start_edge(edge_port, 1, directory / "one")
    try:
        runs: dict[str, list[tuple[LoadResult, float, dict[str, float]]]] = {"baseline": [], "edge": []}
        edge_pids = worker_pids(edge_port)
        for _ in range(args.repeat):
            runs["baseline"].append(measure(baseline_port, bodies, args, [baseline.pid]))
            runs["edge"].append(measure(edge_port, bodies, args, edge_pids))
        best = {name: max(results, key=lambda r: r[0].requests_per_s) for name, results in runs.items()}
        print(describe("aiohttp minimal app", *best["baseline"]))
        print(describe("edge, 1 worker", *best["edge"]))
        paired = sorted(e[0].requests_per_s / b[0].requests_per_s for b, e in zip(runs["baseline"], runs["edge"]))
        memory_one = worker_memory(edge_port)
    finally:
        stop(edge)
    edge_two = start_edge(edge_port, 2, directory / "two")
    try:
        two_pids = worker_pids(edge_port)
        two = max((measure(edge_port, bodies, args, two_pids) for _ in range(args.repeat)),
                  key=lambda r: r[0].requests_per_s)
        print(describe("edge, 2 workers", *two))
        memory_two = worker_memory(edge_port)
    finally:
        stop(edge_two)
        stop(baseline)
        shutil.rmtree(directory)
    ratio = best["edge"][0].requests_per_s / best["baseline"][0].requests_per_s
    print(f"ratio edge (1 worker) / minimal aiohttp app: {ratio:.2f} best of each, "
          f"{paired[len(paired) // 2]:.2f} median of {len(paired)} back-to-back pairs "
          f"({', '.join(f'{r:.2f}' for r in paired)})   (target >= 0.6)")
    print(f"ratio edge (2 workers) / minimal aiohttp app (1 process): "
          f"{two[0].requests_per_s / best['baseline'][0].requests_per_s:.2f}")
    for label, memory in (("1 worker", memory_one), ("2 workers", memory_two)):
        print(f"memory per worker after load ({label}): " + ", ".join(
            f"pid {pid}: RSS {rss / 1024:.1f} MiB, PSS {pss / 1024:.1f} MiB" for pid, rss, pss in memory))


if __name__ == "__main__":
    main()
