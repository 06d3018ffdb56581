"""The end-to-end demo: a node on the embedded default, a few hundred pings, two MapReduce jobs.

    bash examples/demo.sh            # or: .venv/bin/python examples/demo.py [--pings 300] [--keep]

1. starts ``telemetry run`` (edge + processor) on a copy of ``plugins.yaml``
   in a fresh directory, on a free port;
2. sends realistic pings built from the 2013 Firefox fixture ping: several
   channels and versions, gzip and plain, idle-daily and saved-session,
   and a few broken ones (bad JSON, a gzip bomb, a wrong path);
3. waits until every acknowledged ping is processed and published, stops the
   node cleanly (SIGTERM) and checks with ``telemetry reconcile`` that each
   acknowledged ping landed exactly once;
4. explains every difference between the acknowledged pings and the
   records the jobs count (quarantined with their category, parked), from
   the node's ``/status``;
5. runs the example jobs with every executor available here (local, and
   Spark when pyspark and Java are installed), prints their answers and
   where everything landed, and draws the histogram job's output as bar
   charts (``telemetry report``).

It works in a fresh temporary directory (printed first), deleted at the end
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TELEMETRY = str(BIN / "telemetry")
FIXTURE = REPO / "tests" / "fixtures" / "payload_v1_packed_log__telemetry1.log"
CHANNELS = [("release", "23.0.1", "20130814063812"), ("beta", "24.0", "20130910160258"),
            ("aurora", "25.0a2", "20130918004001"), ("nightly", "26.0a1", "20130920030202")]


def fixture_payload() -> dict:
    sys.path.insert(0, str(REPO))
    from telemetry_core.store.spool.files import SpoolReader

    (record,) = SpoolReader(FIXTURE)
    return json.loads(gzip.decompress(record.body))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"telemetry run exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the node did not become ready")


def send_pings(port: int, count: int, rng: random.Random) -> tuple[list[str], int]:
    """Send ``count`` pings; return the ids that got a 2xx and how many were refused."""
    template = fixture_payload()
    acked, refused = [], 0
    for index in range(count):
        channel, version, build_id = CHANNELS[index % len(CHANNELS)]
        reason = "saved-session" if rng.random() < 0.3 else "idle-daily"
        record_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        payload = dict(template, info=dict(template["info"], appUpdateChannel=channel, appVersion=version,
                                           appBuildID=build_id, reason=reason))
        body = json.dumps(payload).encode()
        path = f"/submit/telemetry/{record_id}/{reason}/Firefox/{version}/{channel}/{build_id}"
        headers = {"Content-Type": "application/json"}
        kind = index % 50
        if kind == 7:
            body = b"{this is not json"
        elif kind == 19:
            bomb = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            body = b"".join(bomb.compress(b"\0" * (1 << 20)) for _ in range(64)) + bomb.flush()
            headers["Content-Encoding"] = "gzip"
        elif kind == 31:
            path = f"/submit/telemetry/not-a-uuid/{reason}/Firefox/{version}/{channel}/{build_id}"
        elif rng.random() < 0.5:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        status = post(port, path, body, headers)
        if 200 <= status < 300:
            acked.append(record_id)
        else:
            refused += 1
    return acked, refused


def settle(data_dir: Path, timeout: float = 120) -> None:
    """Wait until no spool file is waiting and the processor has published what it claimed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = [p for area in ("open", "finished") for p in (data_dir / "spool" / area).glob("*.spool")]
        working = list((data_dir / "work").glob("*"))
        if not waiting and not working:
            return
        time.sleep(0.5)


def node_status(port: int) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/status")
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def explain(acknowledged: int, status: dict) -> None:
    """Why the jobs count fewer records than were acknowledged: every difference, from the node's /status."""
    totals = status["totals"]
    invalid = status["node"].get("processor", {}).get("invalid", {})
    categories = ", ".join(f"{count} {name}" for name, count in sorted(invalid.items()) if count) or "none"
    print(f"\nof {acknowledged} acknowledged pings: {totals['processed']} stored in the partitioned archive "
          f"(what the jobs below count), {totals['quarantined']} quarantined to _invalid/ ({categories}; "
          "e.g. a body that is not JSON is acknowledged, since the edge never parses it, and quarantined by "
          f"the processor), {totals['parked']} parked waiting for their Histograms.json revision")
    missing = acknowledged - totals["processed"] - totals["quarantined"] - totals["parked"]
    if missing:
        print(f"  {missing} not accounted for by /status: see telemetry reconcile above")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([TELEMETRY, *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def spark_available() -> bool:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return False
    return shutil.which("java") is not None


def main() -> None:
    parser = argparse.ArgumentParser(description="telemetry-core end-to-end demo")
    parser.add_argument("--pings", type=int, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the demo directory")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="telemetry-demo-"))
    shutil.copy(REPO / "plugins.yaml", workdir / "plugins.yaml")
    shutil.copy(REPO / "telemetry_schema.json", workdir / "telemetry_schema.json")
    port = free_port()
    config = ["--config", "plugins.yaml", "--set", f"receive.port={port}", "--set", "receive.spool.max_file_age_s=2",
              "--set", "convert.histograms.server=null", "--set", "process.poll_interval=0.2"]
    where = "kept afterwards" if args.keep else "deleted at the end; run with --keep to look at it afterwards"
    print(f"demo directory: {workdir} ({where})")
    node = subprocess.Popen([TELEMETRY, "run", *config], cwd=workdir, stdout=open(workdir / "run.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(port, node)
        print(f"node ready on http://127.0.0.1:{port}/ (log: {workdir / 'run.log'}); "
              f"live dashboard while it runs: http://127.0.0.1:{port}/dashboard")
        acked, refused = send_pings(port, args.pings, random.Random(2013))
        print(f"sent {args.pings} pings: {len(acked)} acknowledged, {refused} refused by the edge "
              "(a gzip bomb and a path without a valid id: answered 4xx, never stored)")
        time.sleep(3)
        settle(workdir / "data")
        time.sleep(1.5)  # every process publishes its final figures
        status = node_status(port)
    finally:
        node.send_signal(signal.SIGTERM)
        code = node.wait(timeout=120)
    print(f"node stopped cleanly (exit {code})")
    drained = run("process", "--once", *config, cwd=workdir)
    ids = workdir / "acknowledged.txt"
    ids.write_text("\n".join(acked) + "\n")
    check = run("reconcile", *config, "--ids", str(ids), cwd=workdir)
    print("telemetry reconcile --ids acknowledged.txt:")
    for line in (check.stdout.strip().splitlines() or check.stderr.strip().splitlines()):
        print(f"  {line}")
    explain(len(acked), status)
    archive = workdir / "data" / "archive"
    print(f"\nwhere everything landed ({archive}):")
    areas: dict[str, list[int]] = {}
    for path in sorted(archive.rglob("*")):
        if path.is_file():
            area = path.parent.relative_to(archive).as_posix()
            areas.setdefault(area, []).append(path.stat().st_size)
    for area, sizes in sorted(areas.items()):
        print(f"  {area}/  {len(sizes)} files, {sum(sizes)} bytes")
    executors = ["local"] + (["spark"] if spark_available() else [])
    for job in ("count_by_day", "dimensions"):
        for executor in executors:
            output = workdir / f"{job}.{executor}.txt"
            result = run("mapreduce", "--job", str(REPO / "examples" / "jobs" / f"{job}.py"),
                         "--filter", str(REPO / "examples" / "filters" / "all.json"), "--output", str(output),
                         "--executor", executor, *config, cwd=workdir)
            print(f"\n{job} with the {executor} executor (exit {result.returncode}):")
            print(output.read_text().rstrip() if output.exists() else result.stderr)
    if not executors[1:]:
        print("\n(the spark executor needs pyspark and Java: pip install 'telemetry-core[spark]')")
    histograms = workdir / "histogram_aggregate.local.txt"
    run("mapreduce", "--job", str(REPO / "examples" / "jobs" / "histogram_aggregate.py"), "--filter",
        str(REPO / "examples" / "filters" / "all.json"), "--output", str(histograms), *config, cwd=workdir)
    page = workdir / "histograms.html"
    drawn = run("report", str(histograms), "--html", str(page), cwd=workdir) if histograms.exists() else None
    if drawn is not None and drawn.returncode == 0:
        print(f"\nhistogram_aggregate's output drawn as bar charts (telemetry report): {page}"
              + ("" if args.keep else " (open it after a run with --keep)"))
    if args.keep:
        print(f"\nkept {workdir}: run.log, data/ (spool, archive, metrics), the jobs' outputs, histograms.html")
    else:
        shutil.rmtree(workdir)
        print(f"\ndeleted {workdir}; run bash examples/demo.sh --keep to keep it")
    sys.exit(0 if check.returncode == 0 and drained.returncode == 0 else 1)


if __name__ == "__main__":
    main()
