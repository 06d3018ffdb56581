"""One node, one view: every process of ``telemetry run`` in /status, /metrics and the logs; --profile of all."""

from __future__ import annotations

import json
import os
import pstats
import re
import signal
import time

from edge_fixtures import REPO, EdgeNode, fixture_ping, get, new_id, post, request
from telemetry_core.metrics.node import MemberPublisher, member_path, read_members, retired_path
from telemetry_core.metrics.node_view import NodeView
from telemetry_core.metrics.stats import counter_stats

PINGS = 12
BROKEN = 3


def run_node(tmp_path, *overrides, extra_args=()):
    settings = ["receive.spool.max_file_age_s=0.5", "process.poll_interval=0.1", "convert.histograms.server=null",
                f"convert.histograms.cache_dir={tmp_path / 'hc'}", "metrics.node_interval_s=0.2",
                "metrics.heartbeat_s=0.5", *overrides]
    return EdgeNode(tmp_path / "node", node_id="obs", overrides=settings).start(command="run",
                                                                                extra_args=extra_args)


def send_pings(node, count=PINGS, broken=BROKEN):
    path, body = fixture_ping()
    dims = path.split("/", 1)[1]
    for _ in range(count):
        answer = post(node.port, f"/submit/telemetry/{new_id()}/{dims}", body, {"Content-Encoding": "gzip"})
        assert answer.status == 200, answer
    for _ in range(broken):
        assert post(node.port, f"/submit/telemetry/{new_id()}/{dims}", b"{not json").status == 200


def wait_for(predicate, timeout=60.0, what="a condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def processed(node, count):
    status = get(node.port, "/status").json()
    totals = status["totals"]
    return status if totals["processed"] + totals["quarantined"] >= count else None


def sample_sum(text, name, **labels):
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            total += float(match.group(2))
    return total


def docs_convert_plugin(directory):
    """The convert-hook example of docs/writing-plugins.md, as a file to load."""
    text = (REPO / "docs" / "writing-plugins.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "count_addons" in b]
    path = directory / "count_addons.py"
    path.write_text(block)
    return path


def test_run_shows_the_processor_in_status_metrics_logs_and_profile(tmp_path):
    profile = tmp_path / "run.prof"
    plugin = docs_convert_plugin(tmp_path)
    node = run_node(tmp_path, f"plugins.load=[{plugin}]", extra_args=["--profile", str(profile)])
    try:
        send_pings(node)
        status = wait_for(lambda: processed(node, PINGS + BROKEN), what="the pings to be processed")
        assert status["totals"]["accepted"] == PINGS + BROKEN
        assert status["totals"]["processed"] == PINGS
        assert status["totals"]["quarantined"] == BROKEN
        assert sum(status["node"]["processor"]["invalid"].values()) == BROKEN  # by category
        assert {"run", "processor-0", "worker-0"} <= set(status["processes"])
        processor = status["processes"]["processor-0"]["stats"]
        assert processor["hooks"]["telemetry_convert_payload"]["calls"] >= PINGS
        assert processor["plugins"]["convert.histograms"]["telemetry_convert_payload"]["calls"] >= PINGS
        assert status["node"]["hooks"]["telemetry_receive_validate"]["calls"] == PINGS + BROKEN
        assert processor["count_addons"]["records"] == PINGS  # a third-party plugin's counters
        assert status["node"]["count_addons"]["records"] == PINGS
        metrics = get(node.port, "/metrics").text
        assert sample_sum(metrics, "telemetry_count_addons_records", process="processor-0") == PINGS
        assert sample_sum(metrics, "telemetry_plugin_hook_calls_total", plugin="count_addons",
                          hook="telemetry_convert_payload") == PINGS
        assert sample_sum(metrics, "telemetry_hook_calls_total", hook="telemetry_convert_payload") >= PINGS
        assert sample_sum(metrics, "telemetry_hook_calls_total", hook="telemetry_convert_payload",
                          process="processor-0") >= PINGS
        assert sample_sum(metrics, "telemetry_processor_records_invalid", process="processor-0") == BROKEN
        assert sample_sum(metrics, "telemetry_edge_accepted", process="worker-0") == PINGS + BROKEN
        wait_for(lambda: re.search(r"node obs: accepted [\d.]+/s, processed [\d.]+/s", node.log()),
                 what="a heartbeat line")
    finally:
        assert node.stop() == 0, node.log()
    log = node.log()
    lines = re.findall(r"processed (obs\.\S+\.spool): (\d+) records valid, (\d+) invalid, (\d+) duplicate, "
                       r"(\d+) parked in [\d.]+ s \([\d.]+ MB/s\)", log)
    assert sum(int(line[1]) for line in lines) == PINGS and sum(int(line[2]) for line in lines) == BROKEN
    functions = {(os.path.basename(path), name) for path, _, name in pstats.Stats(str(profile)).stats}
    assert ("processor.py", "_handle_locked") in functions  # the processor worker's
    assert ("app.py", "submit") in functions  # the edge worker's handler
    assert ("cli.py", "run") in functions  # the parent's
    assert sorted(p.name.split(".")[2] for p in tmp_path.glob("run.prof.*.prof")) == \
        ["main", "processor-0", "worker-0"]


def test_a_restarted_member_goes_on_counting(tmp_path):
    """The dead predecessor's last counts are folded in; percentiles stay the live process's."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    dead_pid = 2 ** 22 + 4321
    predecessor = {"pid": dead_pid, "member": "processor-0", "written_at": time.time(),
                   "stats": {"processor": {"records_valid": 7, "invalid": {"corrupted_data": 2}},
                             "hooks": {"telemetry_convert_payload": {"calls": 7, "latency": {
                                 "count": 7, "sum": 0.7, "max": 0.3, "min": 0.01, "median": 0.1}}}}}
    member_path(directory, "n1", "processor-0").write_text(json.dumps(predecessor))
    counters = counter_stats("/processor", "records_valid")
    counters.records_valid = 3
    publisher = MemberPublisher(directory, "n1", "processor-0", 60.0)
    publisher.start()
    try:
        members = read_members(directory, "n1")
        assert members["processor-0"]["pid"] == os.getpid()
        assert members["processor-0"]["restarts"] == 1
        assert members["processor-0"]["stats"]["processor"]["records_valid"] == 10
        assert members["processor-0"]["stats"]["processor"]["invalid"] == {"corrupted_data": 2}
        assert members["processor-0"]["stats"]["hooks"]["telemetry_convert_payload"]["latency"]["max"] == 0.3
        assert "median" not in members["processor-0"]["stats"]["hooks"]["telemetry_convert_payload"]["latency"]
        assert json.loads(retired_path(directory, "n1", "processor-0").read_text())["successor_pid"] == os.getpid()
    finally:
        publisher.stop()


def test_status_leaves_out_dead_members_and_counts_the_run_parent_once(tmp_path):
    directory = tmp_path / "metrics"
    directory.mkdir()
    now = time.time()
    documents = {
        "supervisor": {"pid": os.getpid(), "written_at": now, "stats": {"edge_supervisor": {"restarts": 2}}},
        "processor-1": {"pid": 2 ** 22 + 99, "written_at": now, "stats": {"processor": {"records_valid": 50}}},
    }
    for member, document in documents.items():
        member_path(directory, "n1", member).write_text(json.dumps(document))
    counter_stats("/edge_supervisor", "restarts").restarts = 2  # the run parent holds the supervisor's stats
    view = NodeView(directory, "n1", tmp_path, "run", lambda: {"pid": os.getpid(), "written_at": now,
                                                               "started_at": now - 5, "stats": _snapshot()})
    status = view.status()
    assert sorted(status["processes"]) == ["run", "supervisor"]
    assert status["node"]["edge_supervisor"]["restarts"] == 2  # not 4
    assert status["totals"]["processed"] == 0
    assert status["spool_backlog"] == {"files": 0, "oldest_age_s": 0.0}
    assert status["disk"]["free_bytes"] > 0
    assert 'telemetry_edge_supervisor_restarts{node="n1",process="run"} 2' in view.prometheus()


def _snapshot():
    from telemetry_core.metrics.stats import snapshot

    return snapshot()


def test_admin_token_guards_status_metrics_and_dashboard(tmp_path):
    node = EdgeNode(tmp_path / "node", node_id="tok", overrides=["admin.token=s3cret"]).start()
    try:
        for path in ("/status", "/metrics", "/dashboard/dashboard.js"):
            refused = get(node.port, path)
            assert refused.status == 401 and refused.headers["www-authenticate"].startswith("Bearer")
            assert request(node.port, "GET", path, headers={"Authorization": "Bearer wrong"}).status == 401
            assert request(node.port, "GET", path, headers={"Authorization": "Bearer s3cret"}).status == 200
        page = get(node.port, "/dashboard")
        assert page.status == 401 and "admin token" in page.text and "<form" in page.text  # asks for it
        cookie = {"Cookie": "telemetry_admin_token=s3cret"}
        assert "<title>telemetry-core node</title>" in request(node.port, "GET", "/dashboard", headers=cookie).text
        assert post(node.port, f"/submit/telemetry/{new_id()}", b"{}").status == 200  # submissions need none
        assert get(node.port, "/dashboard/../../etc/passwd").status == 404
    finally:
        assert node.stop(signal.SIGTERM) == 0, node.log()


def test_dashboard_files_are_served_without_a_token_when_none_is_set(tmp_path):
    node = EdgeNode(tmp_path / "node", node_id="open").start()
    try:
        for name in ("dashboard.js", "charts.js", "dashboard.css"):
            answer = get(node.port, f"/dashboard/{name}")
            assert answer.status == 200 and answer.body, name
        assert get(node.port, "/dashboard/secrets.txt").status == 404
        assert "<title>telemetry-core node</title>" in get(node.port, "/dashboard").text
    finally:
        node.stop()
