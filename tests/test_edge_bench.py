"""`telemetry bench edge`, the load generator, against a real edge worker."""

from __future__ import annotations

import gzip
import json

import pytest
from click.testing import CliRunner

from edge_fixtures import FIXTURE_LOG, ThreadedEdge
from telemetry_core.cli import cli
from telemetry_core.receive.bench import ping_bodies, read_ping, synthetic_ping


@pytest.fixture
def edge(tmp_path):
    server = ThreadedEdge(tmp_path).start()
    yield server
    server.stop()


def bench(*args: str):
    return CliRunner().invoke(cli, ["bench", "edge", *args], catch_exceptions=False)


def test_single_submissions_each_with_a_fresh_id(edge):
    result = bench("--url", f"http://127.0.0.1:{edge.port}", "--requests", "60", "--connections", "4",
                   "--body-bytes", "5000", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["requests"] == summary["ok"] == 60 and summary["errors"] == {}
    assert summary["requests_per_s"] > 0 and summary["latency_ms"]["p50"] > 0
    records = edge.records()
    assert len({r.path.split("/")[0] for r in records}) == 60
    assert {r.path.split("/")[4] for r in records} <= {"release", "beta", "aurora", "nightly"}
    assert all(4000 < len(r.body) <= 5000 for r in records)


def test_gzip_batches_from_the_fixture_ping(edge):
    result = bench("--url", f"http://127.0.0.1:{edge.port}", "--requests", "5", "--connections", "2",
                   "--gzip", "--batch", "3", "--ping", str(FIXTURE_LOG))
    assert result.exit_code == 0, result.output
    assert "5 requests in" in result.output and "errors: none" in result.output
    records = edge.records()
    assert len(records) == 15
    ping = json.loads(records[0].body)  # a batch record is spooled inflated, as JSON
    assert ping["info"]["appName"] == "Firefox" and "benchmarkId" in ping["info"]


def test_errors_are_reported_and_no_success_exits_1(tmp_path):
    result = bench("--url", "http://127.0.0.1:9", "--requests", "3", "--connections", "1")
    assert result.exit_code == 1
    assert "ConnectionRefusedError: 3" in result.output


def test_bodies_are_sized_and_distinct():
    ping = read_ping(FIXTURE_LOG)
    bodies = ping_bodies(ping, 4, 20_000, compress=True)
    plain = [gzip.decompress(body) for body in bodies]
    assert len(set(plain)) == 4 and all(15_000 < len(body) <= 20_000 for body in plain)
    big = ping_bodies(synthetic_ping(1000), 1, 50_000, compress=False)[0]
    assert 45_000 < len(big) <= 50_000
