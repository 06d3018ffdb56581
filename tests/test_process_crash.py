"""Kill the processor with SIGKILL at random points, under load from the edge; nothing acknowledged
is lost and nothing is stored twice (checked against the client's own list of ids that got 2xx)."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

from telemetry_core.compress.codecs_builtin import GzipCodec, XzCodec, ZstdCodec

from edge_fixtures import DIMS, TELEMETRY, EdgeNode, fixture_ping, new_id, post

KILLS = 25


def client(port: int, acked: list[str], stop: threading.Event, rng: random.Random) -> None:
    _, body = fixture_ping()
    plain = gzip.decompress(body)
    while not stop.is_set():
        record_id = new_id()
        kind = rng.random()
        if kind < 0.45:
            answer = post(port, f"/submit/telemetry/{record_id}/{DIMS}", body, {"Content-Encoding": "gzip"})
        elif kind < 0.9:
            answer = post(port, f"/submit/telemetry/{record_id}/{DIMS}", plain)
        else:
            answer = post(port, f"/submit/telemetry/{record_id}/{DIMS}", b"{this is not json")
        if 200 <= answer.status < 300:
            acked.append(record_id)


def phases_in_work(data_dir: Path) -> set[str]:
    """The phases of the spool files a killed processor left in work/ (where it was killed)."""
    phases = set()
    for state in (data_dir / "work").glob("*.d/state.json"):
        try:
            phases.add(json.loads(state.read_text())["phase"])
        except (OSError, ValueError):
            continue
    for work in (data_dir / "work").glob("*.d"):
        if not (work / "state.json").exists():
            phases.add("claimed")
    return phases


def archived_ids(data_dir: Path) -> list[str]:
    """Ids in every published file, whatever its codec (the default, zstd, here)."""
    codecs = {codec.suffix: codec for codec in (XzCodec(), GzipCodec(), ZstdCodec())}
    ids = []
    for path in (data_dir / "archive").rglob("*.log.*"):
        codec = codecs.get(path.suffix[1:])
        if codec is None:
            continue
        with open(path, "rb") as raw:
            ids.extend(line.split(b"\t", 1)[0].decode() for line in codec.open_reader(raw))
    return ids


def test_sigkill_at_random_points_loses_and_duplicates_nothing(tmp_path):
    rng = random.Random(20131001)
    edge = EdgeNode(tmp_path / "node", node_id="crash", overrides=[
        "receive.spool.max_file_bytes=300000", "receive.spool.max_file_age_s=0.5", "compress.level=3",
        "process.poll_interval=0.05", "convert.histograms.server=null",
        f"convert.histograms.cache_dir={tmp_path / 'hc'}"]).start()
    acked: list[str] = []
    stop = threading.Event()
    load = threading.Thread(target=client, args=(edge.port, acked, stop, rng), daemon=True)
    load.start()
    command = [TELEMETRY, "process", "--config", str(edge.config)] + sum((["--set", o] for o in edge.overrides), [])
    kills = 0
    interrupted: set[str] = set()
    try:
        mid_pipeline = {"claimed", "processed", "compressed"}
        # on a loaded box a kill may land before start-up ends: go on (to a bound) until one lands mid-pipeline
        while kills < KILLS or (not mid_pipeline & interrupted and kills < 3 * KILLS):
            processor = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
            time.sleep(rng.uniform(0.3, 2.5))  # start-up takes ~0.5-1 s on a loaded 2-core box
            os.killpg(processor.pid, signal.SIGKILL)
            processor.wait(timeout=30)
            kills += 1
            interrupted.update(phases_in_work(edge.data_dir))
    finally:
        stop.set()
        load.join(timeout=30)
        assert edge.stop() == 0, edge.log()
    assert kills >= KILLS and len(acked) > 100
    assert {"claimed", "processed", "compressed"} & interrupted, (kills, interrupted)  # killed mid-pipeline
    final = subprocess.run(command + ["--once"], capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    ids_file = tmp_path / "acked.txt"
    ids_file.write_text("\n".join(acked) + "\n")
    check = subprocess.run([TELEMETRY, "reconcile", "--config", str(edge.config), "--ids", str(ids_file)]
                           + sum((["--set", o] for o in edge.overrides), []),
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout[-3000:]
    stored = archived_ids(edge.data_dir)  # independent of the manifests: read every published file
    counts = {record_id: 0 for record_id in acked}
    for record_id in stored:
        if record_id in counts:
            counts[record_id] += 1
    assert [i for i, c in counts.items() if c != 1] == []
    assert len(stored) == len(acked)
    manifests = list((edge.data_dir / "archive" / "_manifests").rglob("*.json"))
    assert sum(len(json.loads(m.read_text())["records"]) for m in manifests) == len(acked)
