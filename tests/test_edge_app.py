"""The edge's endpoints, served by a real worker (engine, built-in plugins, spool) in a thread."""

from __future__ import annotations

import gzip
import json
import time

import pytest

from edge_fixtures import DIMS, ThreadedEdge, fixture_ping, get, new_id, post, request
from telemetry_core import __version__


@pytest.fixture
def edge(tmp_path):
    server = ThreadedEdge(tmp_path).start()
    yield server
    server.stop()


def test_fixture_ping_at_both_url_forms_plain_and_gzip_is_spooled_byte_exact(edge):
    fixture_path, gzip_body = fixture_ping()
    plain_body = gzip.decompress(gzip_body)
    submissions = [
        (fixture_path, gzip_body, {"Content-Encoding": "gzip"}),  # the 2013 request as it was received
        (fixture_path.split("/", 1)[0], gzip_body, {"Content-Encoding": "gzip"}),  # the id-only form
        (f"{new_id()}/{DIMS}", plain_body, {}),
        (new_id(), plain_body, {"Content-Encoding": "identity"}),
    ]
    before = time.time_ns() // 1_000_000
    for path, body, headers in submissions:
        answer = post(edge.port, f"/submit/telemetry/{path}", body, headers)
        assert (answer.status, answer.body) == (200, b"OK\n"), answer
    after = time.time_ns() // 1_000_000
    edge.stop()
    records = edge.records()
    assert [(r.path, r.body) for r in records] == [(path, body) for path, body, _ in submissions]
    assert all(before <= r.timestamp_ms <= after for r in records)
    assert all(r.client_addr is None for r in records)  # not recorded unless configured
    assert not list((edge.data_dir / "spool" / "open").iterdir())  # the file was finished on stop


def test_put_is_accepted_like_post(edge):
    answer = post(edge.port, f"/submit/telemetry/{new_id()}/{DIMS}", b'{"ver": 1}', method="PUT")
    assert answer.status == 200
    assert [r.body for r in edge.records()] == [b'{"ver": 1}']


def test_uuid_shapes_of_any_version_and_case_are_accepted(edge):
    ids = ["17caa68c-25f5-450a-9cce-7d31318846d8", "E7916AAF-AB3E-924C-A0BF-47D54359F721",
           "00000000-0000-0000-0000-000000000000", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"]
    for ident in ids:
        assert post(edge.port, f"/submit/telemetry/{ident}", b"{}").status == 200
    assert [r.path for r in edge.records()] == ids


def test_percent_encoded_dimensions_are_decoded_before_spooling(edge):
    ident = new_id()
    answer = post(edge.port, f"/submit/telemetry/{ident}/saved-session/Firefox%20Beta/24.0/beta/2013", b"{}")
    assert answer.status == 200
    assert edge.records()[0].path == f"{ident}/saved-session/Firefox Beta/24.0/beta/2013"


def test_query_string_is_ignored(edge):
    ident = new_id()
    assert post(edge.port, f"/submit/telemetry/{ident}?v=4", b"{}").status == 200
    assert edge.records()[0].path == ident


def test_motd_and_heartbeats(edge):
    motd = get(edge.port, "/")
    assert motd.status == 200
    assert motd.text == f"telemetry-core {__version__} edge, node test-node, worker 0: ready\n"
    assert get(edge.port, "/__lbheartbeat__").status == 200
    heartbeat = get(edge.port, "/__heartbeat__")
    assert heartbeat.status == 200
    document = heartbeat.json()
    assert document["status"] == "ok"
    assert document["checks"]["spool_writable"]["ok"] and document["checks"]["disk_free"]["free_bytes"] > 0


def test_status_and_metrics_show_the_edge_counters(edge):
    for _ in range(3):
        assert post(edge.port, f"/submit/telemetry/{new_id()}", b"{}").status == 200
    assert post(edge.port, "/submit/telemetry/not-an-id", b"{}").status == 400
    status = get(edge.port, "/status").json()
    assert status["node_id"] == "test-node" and status["answered_by"] == "worker-0"
    assert status["workers"]["0"]["live"] is True
    assert status["node"]["edge"]["accepted"] == 3
    assert status["node"]["edge"]["rejected"] == {"invalid_id": 1}
    assert status["node"]["hooks"]["telemetry_receive_validate"]["calls"] == 3
    latency = status["workers"]["0"]["stats"]["edge"]["latency"]
    assert latency["count"] == 4 and "median" in latency
    metrics = get(edge.port, "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'telemetry_edge_accepted{node="test-node",process="worker-0"} 3' in metrics.text
    assert 'telemetry_edge_rejected_invalid_id{node="test-node",process="worker-0"} 1' in metrics.text
    assert 'telemetry_hook_calls_total{node="test-node",process="worker-0",hook="telemetry_receive_parse_path"} 4' \
        in metrics.text


def test_status_merges_the_snapshots_other_workers_publish(edge):
    """A sibling worker's published snapshot is part of the node's numbers (here: this process
    stands in for a live sibling, so its pid check passes)."""
    assert post(edge.port, f"/submit/telemetry/{new_id()}", b"{}").status == 200
    sibling = {"command": "node.test-node.worker-1", "pid": edge.worker.handlers.metrics.own_document()["pid"],
               "written_at": time.time(), "stats": {"edge": {"accepted": 5, "latency": {"count": 5, "max": 0.5,
                                                                                          "min": 0.1, "median": 0.2}}}}
    (edge.data_dir / "metrics" / "node.test-node.worker-1.json").write_text(json.dumps(sibling))
    dead = dict(sibling, pid=2 ** 22 + 12345)
    (edge.data_dir / "metrics" / "node.test-node.worker-2.json").write_text(json.dumps(dead))
    status = get(edge.port, "/status").json()
    assert sorted(status["workers"]) == ["0", "1"]  # the snapshot of a dead pid is left out
    assert status["node"]["edge"]["accepted"] == 6
    assert status["node"]["edge"]["latency"]["count"] == 6
    assert status["node"]["edge"]["latency"]["max"] == 0.5
    assert "median" not in status["node"]["edge"]["latency"]  # percentiles do not add up
    metrics = get(edge.port, "/metrics").text
    assert 'telemetry_edge_accepted{node="test-node",process="worker-1"} 5' in metrics


def test_unknown_paths_and_methods_are_counted(edge):
    assert get(edge.port, "/nothing/here").status == 404
    assert request(edge.port, "POST", "/status", b"").status == 405
    answer = get(edge.port, f"/submit/telemetry/{new_id()}")
    assert answer.status == 405 and answer.headers["allow"] == "POST, PUT"
    assert request(edge.port, "DELETE", f"/submit/telemetry/{new_id()}").status == 405
    assert edge.rejected() == {"unknown_path": 1, "method_not_allowed": 3}
    assert edge.records() == []


def test_a_full_disk_answers_503_with_retry_after_and_fails_the_heartbeat(tmp_path):
    edge = ThreadedEdge(tmp_path, ["receive.min_free_disk_bytes=1000000000000000000",
                                   "receive.retry_after_s=7"]).start()
    try:
        answer = post(edge.port, f"/submit/telemetry/{new_id()}", b"{}")
        assert answer.status == 503 and answer.headers["retry-after"] == "7"
        assert answer.text.startswith("disk_full:")
        heartbeat = get(edge.port, "/__heartbeat__")
        assert heartbeat.status == 503 and heartbeat.json()["checks"]["disk_free"]["ok"] is False
        assert get(edge.port, "/__lbheartbeat__").status == 200  # the process itself is fine
    finally:
        edge.stop()
    assert edge.records() == []
    assert edge.rejected() == {"disk_full": 1}


def test_a_missing_spool_directory_answers_503(tmp_path):
    edge = ThreadedEdge(tmp_path).start()
    try:
        open_dir = edge.data_dir / "spool" / "open"
        open_dir.rename(open_dir.with_name("moved"))
        edge.worker.handlers.health.refresh()
        answer = post(edge.port, f"/submit/telemetry/{new_id()}", b"{}")
        assert answer.status == 503 and answer.text.startswith("spool_unwritable:")
        assert get(edge.port, "/__heartbeat__").status == 503
        open_dir.with_name("moved").rename(open_dir)
        edge.worker.handlers.health.refresh()
        assert post(edge.port, f"/submit/telemetry/{new_id()}", b"{}").status == 200
    finally:
        edge.stop()


def test_draining_worker_fails_lb_heartbeat_and_motd(edge):
    edge.worker.state.draining = True
    try:
        assert get(edge.port, "/__lbheartbeat__").status == 503
        assert get(edge.port, "/").status == 503
        assert get(edge.port, "/__heartbeat__").json()["checks"]["accepting"]["ok"] is False
    finally:
        edge.worker.state.draining = False
