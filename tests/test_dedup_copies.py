"""Issue #16: byte-identical copies of one submission received in the same millisecond by two
edge workers land in two spool files.  Through real spool files, the real Processor and the
reader of ``telemetry mapreduce --dedup``, the session must still have exactly one live record."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from telemetry_core.reduce.runner import run_job
from telemetry_core.store.process.processor import Processor
from telemetry_core.store.spool.files import SpoolWriter

from dedup_helpers import RedisServer
from process_helpers import processor_engine, uuid

REVISION = "http://hg.mozilla.org/releases/mozilla-release/rev/a55c55edf302"
FILTER = Path(__file__).resolve().parent.parent / "examples" / "filters" / "all.json"
T0 = 1_378_822_911_255

LIVE_KINDS_JOB = '''
import json
import subprocess


def map(key, dims, value, context):
    context.write(key, dims[0] + ":" + str(json.loads(value)["simpleMeasurements"]["uptime"]))


def reduce(key, values, context):
    context.write(key, ",".join(sorted(values)))
'''


def ping(reason: str, uptime: int) -> bytes:
    return json.dumps({"ver": 1, "info": {"reason": reason, "appName": "Firefox", "appVersion": "23.0.1",
                                          "appUpdateChannel": "release", "appBuildID": "20130814063812",
                                          "revision": REVISION},
                       "simpleMeasurements": {"uptime": uptime}, "histograms": {}}).encode()


def spool_file(data_dir: Path, records: list[tuple[str, str, bytes, int]]) -> Path:
    """One finished spool file of ``(id, reason, body, received_at_ms)``."""
    writer = SpoolWriter(data_dir / "spool", "n1")
    for record_id, reason, body, received_at_ms in records:
        writer.append(f"{record_id}/{reason}/Firefox/23.0.1/release/20130814063812", body, timestamp_ms=received_at_ms)
    return writer.close()


def live_records(engine, tmp_path: Path) -> dict[str, list[str]]:
    """Each session's live records (``kind:uptime``) as ``telemetry mapreduce --dedup`` reads them."""
    job = tmp_path / "live_kinds.py"
    job.write_text(textwrap.dedent(LIVE_KINDS_JOB))
    out = tmp_path / "live.txt"
    stats = run_job(engine, job_path=job, filter_path=FILTER, output=out, executor="local", mappers=1,
                    dedup=True, progress=False)
    assert not stats.get("errors"), stats
    return {key: value.split(",") for key, value in (line.split("\t") for line in out.read_text().splitlines())}


@pytest.fixture(params=["sqlite", "redis"])
def engine_overrides(request, tmp_path):
    overrides = ["convert.histograms.server=null", f"convert.histograms.cache_dir={tmp_path / 'hc'}",
                 f"dedup.backend={request.param}"]
    if request.param == "sqlite":
        yield overrides
        return
    redis = RedisServer(tmp_path / "redis").start()
    try:
        yield overrides + [f"dedup.redis_url={redis.url}"]
    finally:
        redis.stop()


def test_a_resend_in_the_same_millisecond_in_another_spool_file_is_a_duplicate(tmp_path, engine_overrides):
    """The failure of issue #16: a session of idle-dailies only, its latest one resent at once and
    spooled by the other edge worker with the same receive time."""
    session, other = uuid(16), uuid(17)
    day1, day2, resent = ping("idle-daily", 1), ping("idle-daily", 2), ping("idle-daily", 3)
    spool_file(tmp_path, [(session, "idle-daily", day1, T0), (session, "idle-daily", day2, T0 + 5),
                          (other, "idle-daily", resent, T0 + 7)])
    spool_file(tmp_path, [(session, "idle-daily", day2, T0 + 5),  # the same copy, same ms, other worker
                          (other, "idle-daily", resent, T0 + 7)])
    engine = processor_engine(tmp_path, overrides=engine_overrides)
    processor = Processor(engine)
    summary = processor.run_once()
    processor.close()
    assert live_records(engine, tmp_path) == {session: ["idle-daily:2"], other: ["idle-daily:3"]}
    assert (summary.records_valid, summary.records_invalid) == (3, 2)  # both second copies left the main store


def test_a_retried_spool_file_still_replays_its_decisions(tmp_path, engine_overrides, monkeypatch):
    """The copy token is the spool location, which a retry keeps: a crash after the decisions and
    a second attempt store the records again instead of turning them into duplicates."""
    session = uuid(18)
    spool_file(tmp_path, [(session, "idle-daily", ping("idle-daily", 1), T0),
                          (session, "idle-daily", ping("idle-daily", 1), T0)])  # a same-ms copy in one file
    engine = processor_engine(tmp_path, overrides=engine_overrides)

    def crash(*args, **kwargs):
        raise SystemExit("killed after the decisions were durable")

    monkeypatch.setattr(Processor, "_compress", crash)
    with pytest.raises(SystemExit):
        Processor(engine).run_once()
    monkeypatch.undo()
    state_path = next((tmp_path / "work").glob("*.d/state.json"))
    state = json.loads(state_path.read_text())
    state["phase"] = "claimed"  # process the file again from its first record
    state_path.write_text(json.dumps(state))
    processor = Processor(engine)
    summary = processor.run_once()
    processor.close()
    assert live_records(engine, tmp_path) == {session: ["idle-daily:1"]}
    assert (summary.records_valid, summary.records_invalid) == (1, 1)


def run_dedup_check(telemetry_cli, data_dir: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    sets = sum((["--set", o] for o in [f"data_dir={data_dir}", "node_id=n1", *overrides]), [])
    return subprocess.run([*telemetry_cli, "dedup", "check", *sets], capture_output=True, text=True, timeout=120)


def test_dedup_check_reports_sessions_with_more_than_one_live_record(tmp_path, engine_overrides, monkeypatch,
                                                                     telemetry_cli):
    """``telemetry dedup check`` finds what issue #16 found with a job: a backend that cannot tell
    same-millisecond copies apart (as before copy ids) leaves two live records; it exits 1."""
    session, other = uuid(16), uuid(17)
    records = [(session, "idle-daily", ping("idle-daily", 1), T0),
               (session, "idle-daily", ping("idle-daily", 2), T0 + 5),
               (other, "saved-session", ping("saved-session", 3), T0 + 9)]
    overrides = {name: engine_overrides + [f'dedup.redis_prefix="{name}:"'] for name in ("blind", "fixed")}
    for data_dir, blind in ((tmp_path / "blind", True), (tmp_path / "fixed", False)):
        spool_file(data_dir, records)
        spool_file(data_dir, records[1:2])  # the resend, same ms, the other edge worker's file
        with monkeypatch.context() as patch:
            if blind:
                patch.setattr("telemetry_core.dedup.deduplicator.accepts_copy_id", lambda backend: False)
            processor = Processor(processor_engine(data_dir, overrides=overrides[data_dir.name]))
            processor.run_once()
            processor.close()
    blind = run_dedup_check(telemetry_cli, tmp_path / "blind", overrides["blind"])
    assert blind.returncode == 1, blind.stderr
    assert f"session {session}: 2 live records: " in blind.stdout
    assert blind.stdout.count("(idle-daily)") == 2
    assert "dedup check: 2 sessions checked (3 live records, 1 superseded records skipped" in blind.stdout
    assert "1 sessions have more than one live record" in blind.stdout
    fixed = run_dedup_check(telemetry_cli, tmp_path / "fixed", overrides["fixed"])
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert fixed.stdout.splitlines()[-1].startswith("dedup check: 2 sessions checked (2 live records, "
                                                    "1 superseded records skipped")
    assert fixed.stdout.splitlines()[-1].endswith("each has one live record")
