"""The edge under hostile or odd clients: half-closed connections, slow bodies, descriptor
exhaustion, readiness under a full disk, absolute-form request targets."""

from __future__ import annotations

import gzip
import resource
import socket
import threading
import time

import pytest

from edge_fixtures import DIMS, EdgeNode, ThreadedEdge, fixture_ping, get, new_id, post, raw_exchange, status_of


@pytest.fixture
def edge(tmp_path):
    running = ThreadedEdge(tmp_path).start()
    yield running
    running.stop()


def submission(record_id: str, body: bytes = b'{"ver": 1}', target: str | None = None) -> bytes:
    target = target or f"/submit/telemetry/{record_id}/{DIMS}"
    return (f"POST {target} HTTP/1.1\r\nHost: edge\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def test_a_half_closed_connection_gets_its_answer(edge):
    record_id = new_id()
    answer = raw_exchange(edge.port, submission(record_id), shutdown_write=True, read_timeout=5)
    assert status_of(answer) == 200, answer
    assert [r.path.split("/", 1)[0] for r in edge.records()] == [record_id]


def test_pipelined_requests_then_half_close_get_every_answer(edge):
    ids = [new_id(), new_id()]
    with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as sock:
        sock.sendall(submission(ids[0]) + submission(ids[1]))
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 2
    assert sorted(r.path.split("/", 1)[0] for r in edge.records()) == sorted(ids)


def test_half_close_on_an_idle_keep_alive_connection_closes_it(edge):
    with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as sock:
        sock.sendall(submission(new_id()))
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(65536) == b""  # closed at once, not after idle_timeout_s


def test_absolute_form_targets_take_the_path_from_the_url_path_never_the_host(edge):
    record_id, other = new_id(), new_id()
    plain = raw_exchange(edge.port, submission(record_id, target=f"http://edge.example/submit/telemetry/"
                                                                 f"{record_id}/{DIMS}?x=1"))
    assert status_of(plain) == 200, plain
    crafted = raw_exchange(edge.port, submission(other, target=f"http://{other}/submit/telemetry/{DIMS}"))
    assert status_of(crafted) in (400, 404), crafted  # the path names no valid id
    paths = [r.path for r in edge.records()]
    assert paths == [f"{record_id}/{DIMS}"]
    outside = raw_exchange(edge.port, submission(other, target=f"http://h/status/submit/telemetry/{other}/{DIMS}"))
    assert status_of(outside) in (404, 405)
    assert other not in "".join(r.path for r in edge.records())


def test_root_and_heartbeat_agree_on_readiness(tmp_path):
    full = ThreadedEdge(tmp_path / "full", ["receive.min_free_disk_bytes=1000000000000000000"]).start()
    fine = ThreadedEdge(tmp_path / "fine").start()
    try:
        assert post(full.port, f"/submit/telemetry/{new_id()}/{DIMS}", b"{}").status == 503
        root, heartbeat = get(full.port, "/"), get(full.port, "/__heartbeat__")
        assert (root.status, heartbeat.status) == (503, 503)
        assert "not ready (disk_free)" in root.text and heartbeat.json()["checks"]["disk_free"]["ok"] is False
        assert (get(fine.port, "/").status, get(fine.port, "/__heartbeat__").status) == (200, 200)
    finally:
        full.stop()
        fine.stop()


SLOW_CONNECTIONS = 650
PROBE_SECONDS = 6.0


def open_slow_uploads(port: int, count: int) -> list[socket.socket]:
    """Connections that announce 1000 bytes of body and send 10."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(f"POST /submit/telemetry/{new_id()}/{DIMS} HTTP/1.1\r\nHost: x\r\n"
                     f"Content-Length: 1000\r\n\r\n".encode() + b"{" * 10)
        sockets.append(sock)
    return sockets


def test_slow_bodies_do_not_starve_other_clients(tmp_path):
    node = EdgeNode(tmp_path / "node", overrides=["receive.workers=1"]).start()
    _, body = fixture_ping()
    answers: dict[str, int] = {}
    slow: list[socket.socket] = []
    try:
        slow = open_slow_uploads(node.port, SLOW_CONNECTIONS)
        time.sleep(0.5)
        deadline = time.monotonic() + PROBE_SECONDS
        while time.monotonic() < deadline:
            try:
                status = str(post(node.port, f"/submit/telemetry/{new_id()}/{DIMS}", body,
                                  {"Content-Encoding": "gzip"}).status)
            except OSError as error:
                status = type(error).__name__
            answers[status] = answers.get(status, 0) + 1
            time.sleep(0.01)
        held = 0
        for sock in slow:  # the slow uploads still open, and what the refused ones were told
            sock.settimeout(0.01)
            try:
                held += sock.recv(200) == b""
            except (socket.timeout, BlockingIOError):
                held += 1
            except OSError:
                pass
    finally:
        for sock in slow:
            sock.close()
        assert node.stop() == 0, node.log()[-3000:]
    total = sum(answers.values())
    ratio = answers.get("200", 0) / total
    print(f"\nslow-client test: {SLOW_CONNECTIONS} slow uploads (Content-Length 1000, 10 bytes sent), "
          f"{total} probes from another client, {answers.get('200', 0)} 2xx ({100 * ratio:.1f} %), {answers}")
    assert total >= 50 and ratio >= 0.95, answers


def limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))


def test_descriptor_exhaustion_logs_a_bounded_number_of_lines(tmp_path):
    node = EdgeNode(tmp_path / "node", preexec_fn=limit_descriptors, overrides=["receive.workers=1"]).start()
    sockets = []
    try:
        before = len(node.log())
        for _ in range(300):
            try:
                sockets.append(socket.create_connection(("127.0.0.1", node.port), timeout=2))
            except OSError:
                break
        time.sleep(4.0)
        log = node.log()[before:]
        for sock in sockets:
            sock.close()
        sockets = []
        deadline = time.monotonic() + 15
        status = None
        while time.monotonic() < deadline and status != 200:
            try:
                status = post(node.port, f"/submit/telemetry/{new_id()}/{DIMS}", b'{"ver": 1}').status
            except OSError:
                time.sleep(0.2)
    finally:
        for sock in sockets:
            sock.close()
        node.stop()
    lines = [line for line in log.splitlines() if line.strip()]
    print(f"\nfd exhaustion: {len(lines)} log lines, {len(log)} bytes in 4 s")
    assert "cannot accept connections" in log and "Too many open files" in log
    assert "Traceback" not in log
    assert len(lines) <= 5, log[:3000]
    assert status == 200  # accepting again once descriptors are free
