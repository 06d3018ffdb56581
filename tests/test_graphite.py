"""The Graphite pusher against a real TCP listener."""

from __future__ import annotations

import socket
import threading
import time

import pytest

import telemetry_core.metrics.graphite as graphite
from telemetry_core.metrics.stats import snapshot


class Carbon:
    """A plaintext-protocol listener that records every line it receives."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            with connection:
                data = b""
                while chunk := connection.recv(65536):
                    data += chunk
                self.lines.extend(data.decode().splitlines())

    def close(self):
        self.server.close()


@pytest.fixture
def carbon():
    server = Carbon()
    yield server
    server.close()


def test_pushes_periodically_and_at_shutdown(pm, make_engine, carbon):
    plugin = graphite.GraphitePlugin()
    pm.register(plugin)
    engine = make_engine(**{"metrics.graphite.port": carbon.port, "metrics.graphite.interval": 0.2,
                            "metrics.graphite.prefix": "tele", "node_id": "n.1"})
    engine.startup(command="serve")
    deadline = time.monotonic() + 10
    while not carbon.lines and time.monotonic() < deadline:
        time.sleep(0.05)
    assert carbon.lines, "no periodic push arrived"
    engine.shutdown(command="serve")
    time.sleep(0.2)
    startup = [line for line in carbon.lines if line.startswith("tele.n_1.hooks.telemetry_startup.calls ")]
    assert startup, carbon.lines[:5]
    path, value, stamp = startup[-1].split(" ")
    assert float(value) == 1.0 and abs(int(stamp) - time.time()) < 60
    assert snapshot()["graphite"]["pushes"] >= 2


def test_unreachable_graphite_is_a_warning_not_a_failure(pm, make_engine, caplog):
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    plugin = graphite.GraphitePlugin()
    pm.register(plugin)
    engine = make_engine(**{"metrics.graphite.port": port, "metrics.graphite.interval": 60})
    engine.startup(command="process")
    engine.shutdown(command="process")
    assert "could not push metrics to graphite" in caplog.text
    assert snapshot()["graphite"]["failures"] == 1


def test_off_by_default(pm, make_engine):
    plugin = graphite.GraphitePlugin()
    pm.register(plugin)
    engine = make_engine()
    engine.startup(command="run")
    assert plugin.pusher is None
    engine.shutdown(command="run")


def test_edge_workers_push_their_own_series_and_the_supervisor_its_own(tmp_path, carbon):
    """Two workers of one node must not overwrite each other's series."""
    from edge_fixtures import EdgeNode, new_id, post

    node = EdgeNode(tmp_path, node_id="n1", overrides=[
        "receive.workers=2", f"metrics.graphite.port={carbon.port}", "metrics.graphite.interval=0.2",
        "metrics.graphite.prefix=tele"]).start()
    try:
        for _ in range(6):
            assert post(node.port, f"/submit/telemetry/{new_id()}", b"{}").status == 200
        deadline = time.monotonic() + 20
        wanted = {"tele.n1.worker-0.edge.requests", "tele.n1.worker-1.edge.requests",
                  "tele.n1.edge_supervisor.workers"}
        while time.monotonic() < deadline and not wanted <= {line.split(" ")[0] for line in carbon.lines}:
            time.sleep(0.1)
    finally:
        assert node.stop() == 0
    names = {line.split(" ")[0] for line in carbon.lines}
    assert wanted <= names, sorted(name for name in names if ".edge" in name)[:20]
    assert not any(name.startswith("tele.n1.edge.") for name in names)  # no unlabelled worker series


def test_processor_workers_push_their_hooks_and_quarantine_counts(tmp_path, carbon):
    """Under telemetry run the processor child pushes too: convert hooks and processor/invalid/<category>."""
    from edge_fixtures import EdgeNode, new_id, post

    node = EdgeNode(tmp_path, node_id="n1", overrides=[
        f"metrics.graphite.port={carbon.port}", "metrics.graphite.interval=0.2", "metrics.graphite.prefix=tele",
        "receive.spool.max_file_age_s=0.5", "process.poll_interval=0.1", "convert.histograms.server=null",
        f"convert.histograms.cache_dir={tmp_path / 'hc'}"]).start(command="run")
    wanted = {"tele.n1.processor-0.processor.invalid.corrupted_data",
              "tele.n1.processor-0.hooks.telemetry_store_invalid.calls"}
    try:
        assert post(node.port, f"/submit/telemetry/{new_id()}", b"{not json").status == 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not wanted <= {line.split(" ")[0] for line in carbon.lines}:
            time.sleep(0.1)
    finally:
        assert node.stop() == 0, node.log()
    names = {line.split(" ")[0] for line in carbon.lines}
    assert wanted <= names, sorted(name for name in names if "processor-0" in name)[:20]
