"""Dedup end to end: a stream of idle-dailies and saved-sessions goes through ``telemetry run``
(HTTP edge, processor, dedup backend, ledger published), then ``telemetry mapreduce --dedup``
finds exactly one live record per session -- the right one -- on SQLite and on Redis."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from dedup_helpers import RedisServer
from edge_fixtures import TELEMETRY, EdgeNode, post

REVISION = "http://hg.mozilla.org/releases/mozilla-release/rev/a55c55edf302"
SESSIONS = 40

JOB = '''
import json


def map(key, dims, value, context):
    context.write(key, json.loads(value)["simpleMeasurements"]["uptime"])


def reduce(key, values, context):
    context.write(key, ",".join(str(v) for v in sorted(values)))
'''


def session_stream(rng: random.Random) -> tuple[list[tuple[str, str, bytes]], dict[str, int]]:
    """(id, reason, body) in send order, and the truth: each session's live record (its uptime).

    Each session sends 1-3 idle-dailies (one a day, each with the session's data so far) and, for
    60 % of sessions, a final saved-session; 30 % of submissions are sent again later (exact copies).
    Sessions interleave; within a session the order is kept, as Firefox sends them."""
    per_session, truth = [], {}
    for index in range(SESSIONS):
        session = f"{index:08x}-1111-4222-8333-{index:012x}"
        sends = [("idle-daily", rng.randrange(10**9)) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.6:
            sends.append(("saved-session", rng.randrange(10**9)))
        truth[session] = sends[-1][1]
        bodies = []
        for reason, uptime in sends:
            payload = {"ver": 1, "info": {"reason": reason, "appName": "Firefox", "appVersion": "23.0.1",
                                          "appUpdateChannel": "release", "appBuildID": "20130814063812",
                                          "revision": REVISION},
                       "simpleMeasurements": {"uptime": uptime}, "histograms": {}}
            bodies.append((session, reason, json.dumps(payload).encode()))
            if rng.random() < 0.3:
                bodies.append(bodies[-1])  # an exact resubmission
        per_session.append(bodies)
    order = []
    while any(per_session):
        queue = rng.choice([q for q in per_session if q])
        order.append(queue.pop(0))
    return order, truth


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_dedup_end_to_end_unique_sessions(tmp_path, backend):
    overrides = ["receive.spool.max_file_age_s=0.5", "process.poll_interval=0.1", "convert.histograms.server=null",
                 f"convert.histograms.cache_dir={tmp_path / 'hc'}", f"dedup.backend={backend}"]
    redis = None
    if backend == "redis":
        redis = RedisServer(tmp_path / "redis").start()
        overrides.append(f"dedup.redis_url={redis.url}")
    try:
        node = EdgeNode(tmp_path / "node", node_id="dd", overrides=overrides).start(command="run")
        order, truth = session_stream(random.Random(7))
        for session, reason, body in order:
            answer = post(node.port, f"/submit/telemetry/{session}/{reason}/Firefox/23.0.1/release/20130814063812",
                          body)
            assert answer.status == 200, answer
            time.sleep(0.002)  # distinct receive times, as real resubmissions have
        time.sleep(1.5)
        assert node.stop(signal.SIGTERM) == 0, node.log()
        args = ["--config", str(node.config)] + sum((["--set", o] for o in overrides), [])
        drained = subprocess.run([TELEMETRY, "process", "--once", *args], capture_output=True, text=True,
                                 timeout=300)
        assert drained.returncode == 0, drained.stderr
        job = tmp_path / "live_sessions.py"
        job.write_text(textwrap.dedent(JOB))
        filter_path = Path(__file__).resolve().parent.parent / "examples" / "filters" / "all.json"
        out = tmp_path / "live.txt"
        result = subprocess.run([TELEMETRY, "mapreduce", "--job", str(job), "--filter", str(filter_path),
                                 "--output", str(out), "--dedup", *args], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        live = dict(line.split("\t") for line in out.read_text().splitlines())
        assert len(live) == SESSIONS  # the unique-session count
        assert live == {session: str(uptime) for session, uptime in truth.items()}  # the right record each
        archive = node.data_dir / "archive"
        assert list(archive.glob("_ledger/*.ledger"))
        assert list(archive.glob("_invalid/duplicate/*.zst"))  # exact resubmissions left the main store
    finally:
        if redis is not None:
            redis.stop()
