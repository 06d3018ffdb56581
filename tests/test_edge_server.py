"""The edge as operators run it: `telemetry serve` / `telemetry run` with real worker processes.

Covers the supervisor (workers sharing a port, restarts with back-off,
clean drain on SIGTERM, start failures), a spool that the OS refuses to
grow (503, never a lost acknowledgement) and the embedded default config.
"""

from __future__ import annotations

import gzip
import os
import re
import resource
import shutil
import signal
import socket
import textwrap
import time


from edge_fixtures import (DIMS, REPO, EdgeNode, fixture_ping, free_port, get, new_id, post, spool_records)


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:  # e.g. connection refused while a worker starts
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def test_workers_share_the_port_and_sigterm_drains_and_finishes_every_file(tmp_path):
    node = EdgeNode(tmp_path / "node", overrides=["receive.workers=2"]).start()
    try:
        answered_by = {get(node.port, "/").text.split("worker ")[1].split(":")[0] for _ in range(60)}
        assert answered_by == {"0", "1"}
        accepted = []
        for index in range(40):
            ident = new_id()
            if post(node.port, f"/submit/telemetry/{ident}/{DIMS}", b'{"n": %d}' % index).status == 200:
                accepted.append(ident)
        assert len(accepted) == 40
        status = wait_for(lambda: (s := get(node.port, "/status").json())["node"]["edge"].get("accepted") == 40
                          and s, timeout=10)
        assert sorted(status["workers"]) == ["0", "1"]
        assert all(w["stats"]["edge"].get("accepted", 0) > 0 for w in status["workers"].values())
        assert status["supervisor"]["edge_supervisor"]["workers"] == 2
    finally:
        assert node.stop() == 0, node.log()
    assert not list((node.data_dir / "spool" / "open").iterdir())
    finished = list((node.data_dir / "spool" / "finished").iterdir())
    assert len(finished) == 2 and all(p.name.startswith("node-a.") for p in finished)
    assert sorted(r.path.split("/")[0] for r in spool_records(node.data_dir)) == sorted(accepted)
    assert node.log().count("edge worker") >= 4 and "Traceback" not in node.log()


def test_a_killed_worker_is_restarted_with_back_off_and_its_acknowledged_records_are_kept(tmp_path):
    node = EdgeNode(tmp_path / "node", overrides=["receive.restart_backoff_max_s=20"]).start()
    try:
        before = [new_id() for _ in range(5)]
        assert all(post(node.port, f"/submit/telemetry/{i}", b"{}").status == 200 for i in before)
        for round_ in range(3):
            (pid,) = wait_for(node.worker_pids)
            wait_for(lambda: get(node.port, "/").status == 200)
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: (pids := node.worker_pids()) and pids != [pid] and pids, timeout=20)
        wait_for(lambda: get(node.port, "/").status == 200)
        after = new_id()
        assert post(node.port, f"/submit/telemetry/{after}", b"{}").status == 200
        # the killed worker's open file was finished by the supervisor, untouched
        finished = {r.path for r in spool_records(node.data_dir) if r.path in before}
        assert finished == set(before)
        delays = [float(d) for d in re.findall(r"restarting in ([0-9.]+) s", node.log())]
        assert delays == [0.5, 1.0, 2.0]
        assert node.log().count("exited with signal SIGKILL") == 3
    finally:
        assert node.stop() == 0, node.log()
    assert {r.path for r in spool_records(node.data_dir)} == set(before) | {after}


FAILING_WRITER = '''
    from telemetry_core import hookimpl
    from telemetry_core.errors import ConfigError

    @hookimpl
    def telemetry_store_spool_writer(engine, worker):
        raise ConfigError("the spool volume is not mounted; mount it and restart")
'''


def test_a_worker_that_cannot_start_stops_serve_with_its_reason(tmp_path):
    """Also `telemetry run`: the same one line, exit code 2."""
    plugin = tmp_path / "failing_writer.py"
    plugin.write_text(textwrap.dedent(FAILING_WRITER))
    node = EdgeNode(tmp_path / "node", overrides=[f"plugins.load=[{plugin}]"]).start(wait=False)
    assert node.process.wait(timeout=60) == 2
    line = "error: edge worker 0 could not start: the spool volume is not mounted; mount it and restart\n"
    assert line in node.log() and "Traceback" not in node.log()
    run = EdgeNode(tmp_path / "run", overrides=[f"plugins.load=[{plugin}]"]).start(wait=False, command="run")
    assert run.process.wait(timeout=60) == 2
    assert line in run.log() and "Traceback" not in run.log()


def test_a_port_in_use_is_a_one_line_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        node = EdgeNode(tmp_path / "node", port=busy.getsockname()[1]).start(wait=False)
        assert node.process.wait(timeout=60) == 2
    assert f"error: cannot listen on 127.0.0.1:{node.port}: Address already in use" in node.log()


def limit_file_size() -> None:
    """Child-side: the OS refuses to grow any file past 2 MB (EFBIG; Python ignores SIGXFSZ)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))


def test_a_spool_the_os_refuses_to_grow_answers_503_and_loses_no_acknowledged_record(tmp_path):
    node = EdgeNode(tmp_path / "node", preexec_fn=limit_file_size,
                    overrides=["receive.retry_after_s=5", "receive.spool.fsync=always"]).start()
    accepted, refused = [], []
    try:
        body = b'{"pad": "' + b"x" * 100_000 + b'"}'
        for _ in range(40):
            ident = new_id()
            answer = post(node.port, f"/submit/telemetry/{ident}/{DIMS}", body)
            (accepted if answer.status == 200 else refused).append((ident, answer))
        assert accepted and refused
        assert all(a.status == 503 and a.headers["retry-after"] == "5" and a.text.startswith("spool_write_failed")
                   for _, a in refused)
        heartbeat = get(node.port, "/__heartbeat__")
        assert heartbeat.status == 503
        assert "File too large" in heartbeat.json()["checks"]["spool_writable"]["last_write_error"]
        batch = post(node.port, "/submit/telemetry/batch", f"{new_id()}\t".encode() + body)
        assert batch.status == 503 and batch.json()["results"][0]["reason"] == "spool_write_failed"
    finally:
        assert node.stop() == 0, node.log()
    spooled = [r for r in spool_records(node.data_dir)]
    assert [r.path.split("/")[0] for r in spooled] == [ident for ident, _ in accepted]
    assert all(r.body == body for r in spooled)


def test_telemetry_run_with_the_embedded_default_accepts_the_fixture_ping(tmp_path):
    """`telemetry run --config plugins.yaml` (the shipped file, copied next to its schema)."""
    for name in ("plugins.yaml", "telemetry_schema.json"):
        shutil.copy(REPO / name, tmp_path / name)
    port = free_port()
    node = EdgeNode(tmp_path, port=port, overrides=[f"receive.port={port}"],
                    config_text=(REPO / "plugins.yaml").read_text())
    node.config = tmp_path / "plugins.yaml"
    node.data_dir = tmp_path / "data"
    node.start(command="run")
    try:
        fixture_path, gzip_body = fixture_ping()
        ident = fixture_path.split("/", 1)[0]
        sent = [(fixture_path, gzip_body, {"Content-Encoding": "gzip"}), (ident, gzip_body, {"Content-Encoding": "gzip"}),
                (f"{new_id()}/{DIMS}", gzip.decompress(gzip_body), {}), (new_id(), gzip.decompress(gzip_body), {})]
        before = time.time_ns() // 1_000_000
        for path, body, headers in sent:
            assert post(port, f"/submit/telemetry/{path}", body, headers).status == 200
        after = time.time_ns() // 1_000_000
        # still in the workers' open spool files: byte-exact, with path and receive time
        records = spool_records(node.data_dir)
        assert sorted((r.path, r.body) for r in records) == sorted((p, b) for p, b, _ in sent)
        assert all(before <= r.timestamp_ms <= after for r in records)
        # as the README says: out converted, compressed (zstd) and published in data/archive once
        # the spool file is 10 s old
        deadline = time.monotonic() + 90
        while not list((node.data_dir / "archive").rglob("*.zst")) and time.monotonic() < deadline:
            time.sleep(0.5)
        published = [p.name for p in (node.data_dir / "archive").rglob("*.log.*")]
        assert published and all(name.endswith(".log.zst") for name in published), published
    finally:
        assert node.stop(signal.SIGINT) == 0, node.log()
