"""Real nginx (the Debian package) in front of three edge nodes, with examples/nginx/telemetry-edge.conf.

The truth is the client's own list of submission ids that got a 2xx: each
of them must be in exactly one node's spool, byte for byte, also when one
node is killed (SIGKILL, supervisor and workers at once) in the middle of
the load.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import require_component
from edge_fixtures import DIMS, REPO, EdgeNode, free_port, get, new_id, post, spool_records
from telemetry_core.store.spool.files import finish_orphans

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
EXAMPLE = REPO / "examples" / "nginx" / "telemetry-edge.conf"



@pytest.fixture(autouse=True)
def nginx_installed():
    if not os.path.exists(NGINX):
        require_component("nginx is not installed (bash .ci/run installs it)")


class Nginx:
    """nginx with the example site, its upstream ports and listen port replaced, in a prefix of its own."""

    def __init__(self, directory: Path, edge_ports: list[int]) -> None:
        self.directory = directory
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        site = EXAMPLE.read_text()
        upstreams = iter(edge_ports)
        site = re.sub(r"server 127\.0\.0\.1:808[1-3]", lambda _: f"server 127.0.0.1:{next(upstreams)}", site)
        site = site.replace("listen 8080;", f"listen 127.0.0.1:{self.port};")
        assert next(upstreams, None) is None, "the example should list three edge nodes"
        (directory / "telemetry-edge.conf").write_text(site)
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = "".join(f"    {kind}_temp_path {directory / kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (directory / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {directory / 'nginx.pid'};\nerror_log {directory / 'error.log'} info;\n"
            f"events {{ worker_connections 1024; }}\n"
            f"http {{\n    access_log {directory / 'access.log'};\n{temp}"
            f"    include {directory / 'telemetry-edge.conf'};\n}}\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "Nginx":
        config = self.directory / "nginx.conf"
        check = subprocess.run([NGINX, "-t", "-p", str(self.directory), "-c", str(config)],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.process = subprocess.Popen([NGINX, "-p", str(self.directory), "-c", str(config), "-g", "daemon off;"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if get(self.port, "/__lbheartbeat__").status == 200:
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nginx did not start: " + (self.directory / "error.log").read_text())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def cluster(tmp_path):
    nodes = [EdgeNode(tmp_path / name, node_id=name,
                      overrides=["receive.record_client_addr=true", "receive.trusted_proxies=[127.0.0.1]"])
             for name in ("edge-a", "edge-b", "edge-c")]
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_ready()
    proxy = Nginx(tmp_path / "nginx", [node.port for node in nodes]).start()
    yield proxy, nodes
    proxy.stop()
    for node in nodes:
        if node.process is not None and node.process.poll() is None:
            node.stop()


def spooled_by_node(nodes):
    return {node.node_id: spool_records(node.data_dir) for node in nodes}


def test_every_acknowledged_submission_is_in_exactly_one_nodes_spool_even_when_a_node_dies(cluster):
    proxy, nodes = cluster
    plain = b'{"ver": 1, "info": {"reason": "idle-daily"}, "histograms": {}}'
    compressed = gzip.compress(plain)
    acknowledged: dict[str, bytes] = {}
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    total = 600

    def submit(index: int) -> None:
        ident = new_id()
        body, headers = (compressed, {"Content-Encoding": "gzip"}) if index % 2 else (plain, {})
        headers["X-Forwarded-For"] = "203.0.113.66"  # a forged address nginx must replace
        try:
            status = post(proxy.port, f"/submit/telemetry/{ident}/{DIMS}", body, headers).status
        except OSError as error:
            status = type(error).__name__
        with lock:
            outcomes[str(status)] += 1
            if status == 200:
                acknowledged[ident] = body

    killed = nodes[1]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(submit, index) for index in range(total)]
        while sum(outcomes.values()) < total // 3:
            time.sleep(0.01)
        killed.kill()  # SIGKILL to the supervisor and its worker, in the middle of the load
        killed_at = sum(outcomes.values())
        for future in futures:
            future.result()
    assert killed_at < total and len(acknowledged) > total * 0.9, outcomes

    for node in nodes:
        if node is not killed:
            assert node.stop() == 0, node.log()
    finish_orphans(killed.data_dir / "spool", stale_after_s=0)  # what an operator's restart does

    by_node = spooled_by_node(nodes)
    where: dict[str, list[str]] = {}
    for node_id, records in by_node.items():
        for record in records:
            where.setdefault(record.path.split("/", 1)[0], []).append(node_id)
    lost = [ident for ident in acknowledged if ident not in where]
    assert lost == [], f"{len(lost)} acknowledged submissions are in no spool"
    twice = {ident: nodes_ for ident, nodes_ in where.items() if len(nodes_) > 1}
    assert twice == {}, "submissions stored more than once"
    assert all(len(records) > 0 for records in by_node.values()), "nginx should spread the load"
    bodies = {r.path.split("/", 1)[0]: r for records in by_node.values() for r in records}
    assert all(bodies[ident].body == body for ident, body in acknowledged.items())  # gzip stays gzip
    assert {bodies[ident].client_addr for ident in acknowledged} == {"127.0.0.1"}  # not the forged one

    names = {node.node_id: [p.name for p in (node.data_dir / "spool").rglob("*.spool")] for node in nodes}
    for node_id, files in names.items():
        assert files and all(name.startswith(f"{node_id}.") for name in files)
    all_names = [name for files in names.values() for name in files]
    assert len(all_names) == len(set(all_names))


def test_nginx_applies_the_edge_limits_and_forwards_bad_input_answers(cluster):
    proxy, nodes = cluster
    assert post(proxy.port, f"/submit/telemetry/{new_id()}", b"x" * (1024 * 1024 + 1)).status == 413
    answer = post(proxy.port, "/submit/telemetry/not-a-uuid", b"{}")
    assert answer.status == 400 and answer.text.startswith("invalid_id:")
    assert post(proxy.port, f"/submit/telemetry/{new_id()}", b"{}", {"Content-Encoding": "br"}).status == 415
    motd = get(proxy.port, "/")
    assert motd.status == 200 and "edge, node edge-" in motd.text
    assert post(proxy.port, "/", b"").status == 403
    assert sum(len(records) for records in spooled_by_node(nodes).values()) == 0
