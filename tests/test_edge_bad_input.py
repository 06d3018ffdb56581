"""Bad input at the edge: each kind is refused with its status, counted by reason, and never spooled.

A real worker (engine, built-in plugins, spool) serves in a thread; the
requests go over real sockets, byte for byte where ``http.client`` would
not send them (no Content-Length, truncated bodies, slow clients).
"""

from __future__ import annotations

import concurrent.futures
import gzip
import resource
import socket
import time
import zlib
from pathlib import Path

import pytest

from edge_fixtures import DIMS, ThreadedEdge, get, new_id, post, raw_exchange, request, status_of

LIMITS = ["receive.max_body_bytes=4096", "receive.max_path_bytes=512", "receive.max_inflated_bytes=65536",
          "receive.body_timeout_s=0.5", "receive.idle_timeout_s=1.0"]


@pytest.fixture
def edge(tmp_path):
    server = ThreadedEdge(tmp_path, LIMITS).start()
    yield server
    server.stop()


def assert_refused(edge, answer, status: int, reason: str) -> None:
    assert answer.status == status, answer
    assert answer.text.startswith(f"{reason}:") or answer.text == f"{reason}\n", answer
    assert edge.rejected().get(reason, 0) >= 1, edge.rejected()


BAD_PATHS = [
    # (path after /submit/telemetry/, status, reason)
    ("", 400, "empty_path"),
    (f"{'1' * 8}", 400, "invalid_id"),
    ("not-a-uuid-at-all-0000-000000000000", 400, "invalid_id"),
    ("17caa68c-25f5-450a-9cce-7d31318846dz", 400, "invalid_id"),
    ("{17caa68c-25f5-450a-9cce-7d31318846d8}", 400, "invalid_id"),
    ("17caa68c25f5450a9cce7d31318846d8", 400, "invalid_id"),
    ("17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily", 400, "wrong_segment_count"),
    ("17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily/Firefox/23.0.1/release", 400, "wrong_segment_count"),
    (f"17caa68c-25f5-450a-9cce-7d31318846d8/{DIMS}/extra", 400, "wrong_segment_count"),
    ("17caa68c-25f5-450a-9cce-7d31318846d8/", 400, "empty_segment"),
    ("17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily//23.0.1/release/2013", 400, "empty_segment"),
    ("17caa68c-25f5-450a-9cce-7d31318846d8/../../../../tmp/x", 400, "dot_segment"),
    ("17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily/./23.0.1/release/2013", 400, "dot_segment"),
    ("17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily/%2e%2e/23.0.1/release/2013", 400, "dot_segment"),
    ("17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily/a%2Fb/23.0.1/release/2013", 400, "invalid_character"),
    ("17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily/a%5Cb/23.0.1/release/2013", 400, "invalid_character"),
    ("17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily/Fire%00fox/23.0.1/release/2013", 400, "invalid_character"),
    ("17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily/Fire%09fox/23.0.1/release/2013", 400, "invalid_character"),
    ("17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily/Fire%0Afox/23.0.1/release/2013", 400, "invalid_character"),
    ("17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily/Fire%0Dfox/23.0.1/release/2013", 400, "invalid_character"),
    ("17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily/Fire%1Bfox/23.0.1/release/2013", 400, "invalid_character"),
    ("17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily/Fire%7Ffox/23.0.1/release/2013", 400, "invalid_character"),
    ("17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily/Fire%FFfox/23.0.1/release/2013", 400, "invalid_path_encoding"),
    ("17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily/%C3%28/23.0.1/release/2013", 400, "invalid_path_encoding"),
    (f"17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily/{'F' * 600}/23.0.1/release/2013", 414, "path_too_long"),
    (f"17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily/{'%C3%A9' * 300}/23.0.1/release/2013", 414,
     "path_too_long"),
]


@pytest.mark.parametrize("path, status, reason", BAD_PATHS)
def test_bad_paths(edge, path, status, reason):
    answer = post(edge.port, f"/submit/telemetry/{path}", b'{"ver": 1}')
    assert_refused(edge, answer, status, reason)
    assert edge.records() == []


def test_raw_control_characters_and_non_utf8_bytes_in_the_request_line(edge, caplog):
    """Bytes http.client refuses to send: a raw tab, and Latin-1 bytes, inside the request target."""
    for target in (b"/submit/telemetry/17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily/Fire\tfox/1/release/2",
                   b"/submit/telemetry/17caa68c-25f5-450a-9cce-7d31318846d8/idle-daily/Fire\xe9fox/1/release/2"):
        raw = raw_exchange(edge.port, b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        assert status_of(raw) == 400, raw
    assert edge.records() == []
    assert edge.rejected() == {"bad_request": 2}  # refused by aiohttp's parser, counted, not logged
    assert not [r for r in caplog.records if r.name == "aiohttp.server"]


def test_nothing_is_ever_written_outside_the_data_directory(edge, tmp_path):
    before = {p for p in Path("/tmp").iterdir()}
    for path in ("../../../../../../tmp/escaped", "%2e%2e/%2e%2e/%2e%2e/tmp/escaped",
                 "17caa68c-25f5-450a-9cce-7d31318846d8/..%2F..%2F..%2Ftmp/a/b/c/d"):
        post(edge.port, f"/submit/telemetry/{path}", b"{}")
    assert post(edge.port, f"/submit/telemetry/{new_id()}/{DIMS}", b"{}").status == 200
    edge.stop()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(p.is_relative_to(edge.data_dir) for p in written)
    assert not (Path("/tmp") / "escaped").exists()
    # other processes on the box may create files in /tmp meanwhile: look for what these paths would make
    assert {p.name for p in Path("/tmp").iterdir() if p not in before} & {"escaped", "a", "tmp"} == set()
    assert len(edge.records()) == 1


def test_body_over_the_limit_is_413_without_reading_it(edge):
    answer = post(edge.port, f"/submit/telemetry/{new_id()}", b"x" * 4097)
    assert_refused(edge, answer, 413, "body_too_large")
    assert post(edge.port, f"/submit/telemetry/{new_id()}", b"x" * 4096).status == 200
    assert len(edge.records()) == 1


def test_chunked_body_is_accepted_and_over_the_limit_is_413(edge):
    ident = new_id()
    chunks = b"5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n"
    head = f"POST /submit/telemetry/{ident} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    assert status_of(raw_exchange(edge.port, head + chunks)) == 200
    big = b"".join(b"400\r\n" + b"y" * 1024 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
    head = f"POST /submit/telemetry/{new_id()} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    assert status_of(raw_exchange(edge.port, head + big)) == 413
    assert [(r.path, r.body) for r in edge.records()] == [(ident, b'{"a": 1}')]
    assert edge.rejected() == {"body_too_large": 1}


def test_missing_content_length_is_411(edge):
    raw = raw_exchange(edge.port, f"POST /submit/telemetry/{new_id()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status_of(raw) == 411
    assert edge.rejected() == {"length_required": 1}


def test_empty_body_is_400(edge):
    assert_refused(edge, post(edge.port, f"/submit/telemetry/{new_id()}", b""), 400, "empty_body")
    assert edge.records() == []


def test_truncated_body_is_not_spooled(edge):
    head = f"POST /submit/telemetry/{new_id()} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode()
    raw_exchange(edge.port, head + b"{" * 500, shutdown_write=True, read_timeout=3)
    deadline = time.monotonic() + 5
    while "truncated_body" not in edge.rejected() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert edge.rejected() == {"truncated_body": 1}
    assert edge.records() == []


def test_slow_body_times_out_with_408(edge):
    head = f"POST /submit/telemetry/{new_id()} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode()
    started = time.monotonic()
    raw = raw_exchange(edge.port, head + b"{" * 10, read_timeout=5)
    assert status_of(raw) == 408
    assert time.monotonic() - started < 4
    assert edge.rejected() == {"body_timeout": 1}
    assert edge.records() == []


def test_slow_headers_are_cut_off_after_the_idle_timeout(edge):
    with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as sock:
        sock.sendall(b"POST /submit/telemetry/")
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server, no answer
        assert 0.5 < time.monotonic() - started < 4
    assert edge.records() == []


@pytest.mark.parametrize("encoding", ["br", "deflate", "compress", "zstd", "gzip, br"])
def test_unsupported_content_encoding_is_415(edge, encoding):
    answer = post(edge.port, f"/submit/telemetry/{new_id()}", b"\x00\x01", {"Content-Encoding": encoding})
    assert_refused(edge, answer, 415, "unsupported_encoding")


@pytest.mark.parametrize("body, reason", [
    (b"{\"not\": \"gzip\"}", "corrupt_gzip"),
    (gzip.compress(b'{"ver": 1}')[:-6], "corrupt_gzip"),  # cut short
    (gzip.compress(b'{"ver": 1}') + b"trailing garbage", "corrupt_gzip"),
    (b"\x1f\x8b\x08\x00" + b"\xff" * 40, "corrupt_gzip"),
])
def test_corrupt_gzip_is_400_with_its_reason(edge, body, reason):
    answer = post(edge.port, f"/submit/telemetry/{new_id()}", body, {"Content-Encoding": "gzip"})
    assert_refused(edge, answer, 400, reason)
    assert edge.records() == []


def test_concatenated_gzip_members_are_valid(edge):
    body = gzip.compress(b'{"ver":') + gzip.compress(b" 1}")
    assert post(edge.port, f"/submit/telemetry/{new_id()}", body, {"Content-Encoding": "gzip"}).status == 200
    assert edge.records()[0].body == body  # spooled as received, still gzip


def streamed_bomb(inflated: int) -> bytes:
    """gzip of ``inflated`` zero bytes, built a megabyte at a time (never in memory inflated)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    parts = [compressor.compress(block) for _ in range(inflated >> 20)]
    parts.append(compressor.flush())
    return b"".join(parts)


def test_a_gzip_bomb_is_413_and_memory_stays_bounded(tmp_path):
    bomb = streamed_bomb(512 << 20)  # 512 MiB of zeros in about 0.5 MB
    edge = ThreadedEdge(tmp_path, [f"receive.max_body_bytes={len(bomb) + 1}",
                                   "receive.max_inflated_bytes=1048576"]).start()
    try:
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for path in (f"/submit/telemetry/{new_id()}", "/submit/telemetry/batch"):
            answer = post(edge.port, path, bomb, {"Content-Encoding": "gzip"})
            assert answer.status == 413 and answer.text.startswith("inflated_too_large:"), answer
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
        assert grown_kib < 64 * 1024, f"memory grew by {grown_kib} KiB while refusing a gzip bomb"
    finally:
        edge.stop()
    assert edge.records() == []
    assert edge.rejected() == {"inflated_too_large": 2}


def test_many_connections_each_get_an_answer(edge):
    """200 concurrent clients, each on its own connection: every one answered, every 200 spooled."""
    def submit(index: int) -> tuple[str, int]:
        ident = new_id()
        return ident, post(edge.port, f"/submit/telemetry/{ident}/{DIMS}", b'{"n": %d}' % index).status

    with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(submit, range(400)))
    accepted = [ident for ident, status in results if status == 200]
    assert len(accepted) == 400
    assert sorted(r.path.split("/", 1)[0] for r in edge.records()) == sorted(accepted)


def test_idle_connections_do_not_block_others_and_are_closed(edge):
    sockets = [socket.create_connection(("127.0.0.1", edge.port)) for _ in range(300)]
    try:
        assert post(edge.port, f"/submit/telemetry/{new_id()}", b"{}").status == 200
        time.sleep(1.5)  # idle_timeout_s = 1
        sockets[0].settimeout(2)
        assert sockets[0].recv(10) == b""
    finally:
        for sock in sockets:
            sock.close()


def test_slow_bodies_are_bounded_apart_and_do_not_take_in_flight_slots(tmp_path):
    edge = ThreadedEdge(tmp_path, ["receive.max_in_flight=2", "receive.max_slow_bodies=2",
                                   "receive.body_timeout_s=3"]).start()
    slow = []
    try:
        for _ in range(2):  # two uploads stuck in their bodies
            sock = socket.create_connection(("127.0.0.1", edge.port))
            sock.sendall(f"POST /submit/telemetry/{new_id()} HTTP/1.1\r\nHost: x\r\n"
                         f"Content-Length: 10\r\n\r\n{{".encode())
            slow.append(sock)
        deadline = time.monotonic() + 5
        while edge.worker.state.reading < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert edge.worker.state.in_flight == 0
        assert post(edge.port, f"/submit/telemetry/{new_id()}", b"{}").status == 200  # a complete request
        # headers and body in two writes, the body 0.2 s late: within receive.body_grace_s, not slow
        late = raw_exchange(edge.port, f"POST /submit/telemetry/{new_id()} HTTP/1.1\r\nHost: x\r\n"
                                       f"Content-Length: 2\r\nConnection: close\r\n\r\n".encode(),
                            pause_after=0.2, more=b"{}", read_timeout=3)
        assert status_of(late) == 200
        third = raw_exchange(edge.port, f"POST /submit/telemetry/{new_id()} HTTP/1.1\r\nHost: x\r\n"
                                        f"Content-Length: 10\r\n\r\n{{".encode(), read_timeout=3)
        assert status_of(third) == 503 and b"too_many_slow_bodies" in third and b"Retry-After: 30" in third
    finally:
        for sock in slow:
            sock.close()
        edge.stop()
    assert len(edge.records()) == 2


def test_overload_of_complete_requests_answers_503_with_retry_after(tmp_path):
    edge = ThreadedEdge(tmp_path, ["receive.max_in_flight=2"]).start()
    try:
        edge.worker.state.in_flight = 2  # two requests with complete bodies being spooled
        answer = post(edge.port, f"/submit/telemetry/{new_id()}", b"{}")
        assert answer.status == 503 and answer.headers["retry-after"] == "30"
        assert answer.text.startswith("overloaded:")
        edge.worker.state.in_flight = 0
        assert post(edge.port, f"/submit/telemetry/{new_id()}", b"{}").status == 200
    finally:
        edge.stop()
    assert len(edge.records()) == 1


def test_every_rejection_is_counted_by_reason(edge):
    post(edge.port, "/submit/telemetry/bad-id", b"{}")
    post(edge.port, f"/submit/telemetry/{new_id()}", b"")
    post(edge.port, f"/submit/telemetry/{new_id()}", b"{}", {"Content-Encoding": "br"})
    request(edge.port, "GET", f"/submit/telemetry/{new_id()}")
    get(edge.port, "/favicon.ico")
    assert edge.rejected() == {"invalid_id": 1, "empty_body": 1, "unsupported_encoding": 1,
                               "method_not_allowed": 1, "unknown_path": 1}
    assert dict(edge.stats.responses) == {"400": 2, "415": 1, "405": 1, "404": 1}
