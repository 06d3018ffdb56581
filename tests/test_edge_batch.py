"""The batch endpoints: each record accepted or refused on its own, with a response that says which."""

from __future__ import annotations

import gzip

import pytest

from edge_fixtures import ThreadedEdge, new_id, post

DIMS_FIELDS = "saved-session\tFirefox\t23.0.1\trelease\t20130814063812"


@pytest.fixture
def edge(tmp_path):
    server = ThreadedEdge(tmp_path, ["receive.max_batch_records=5", "receive.max_path_bytes=256"]).start()
    yield server
    server.stop()


def test_batch_of_ids_and_json(edge):
    ids = [new_id() for _ in range(3)]
    body = "\t".join(f"{ident}\t{{\"n\": {n}}}" for n, ident in enumerate(ids)).encode()
    answer = post(edge.port, "/submit/telemetry/batch", body)
    assert answer.status == 200
    assert answer.json() == {"accepted": 3, "rejected": 0, "results": [{"id": i, "status": 200} for i in ids]}
    assert [(r.path, r.body) for r in edge.records()] == [(i, b'{"n": %d}' % n) for n, i in enumerate(ids)]


def test_batch_with_dimensions_and_a_bad_record_in_the_middle(edge):
    good = [new_id(), new_id()]
    body = (f"{good[0]}\t{DIMS_FIELDS}\t{{}}\t"
            f"not-an-id\t{DIMS_FIELDS}\t{{}}\t"
            f"{good[1]}\t{DIMS_FIELDS}\t{{\"ver\": 1}}\t"
            f"{new_id()}\t{DIMS_FIELDS}\t\n").encode()  # last record: empty JSON, one trailing newline
    answer = post(edge.port, "/submit/telemetry/batch_dims", body)
    assert answer.status == 200
    document = answer.json()
    assert document["accepted"] == 2 and document["rejected"] == 2
    assert [(r["status"], r.get("reason")) for r in document["results"]] == [
        (200, None), (400, "invalid_id"), (200, None), (400, "empty_body")]
    dims = DIMS_FIELDS.replace("\t", "/")
    assert [(r.path, r.body) for r in edge.records()] == [(f"{good[0]}/{dims}", b"{}"),
                                                           (f"{good[1]}/{dims}", b'{"ver": 1}')]
    assert edge.rejected() == {"invalid_id": 1, "empty_body": 1}
    assert edge.stats.batch_records == 4 and edge.stats.accepted == 2


def test_gzip_batch_is_inflated_and_each_record_spooled_as_json(edge):
    ident = new_id()
    body = gzip.compress(f"{ident}\t{{\"a\": 1}}".encode())
    answer = post(edge.port, "/submit/telemetry/batch", body, {"Content-Encoding": "gzip"})
    assert answer.status == 200 and answer.json()["accepted"] == 1
    assert [(r.path, r.body) for r in edge.records()] == [(ident, b'{"a": 1}')]


@pytest.mark.parametrize("path, body, status, reason", [
    ("batch", b"", 400, "empty_body"),
    ("batch", b"\n", 400, "empty_body"),
    ("batch", b"17caa68c-25f5-450a-9cce-7d31318846d8\t{}\textra", 400, "malformed_batch"),
    ("batch_dims", b"17caa68c-25f5-450a-9cce-7d31318846d8\t{}", 400, "malformed_batch"),
    ("batch", b"\t".join([b"17caa68c-25f5-450a-9cce-7d31318846d8\t{}"] * 6), 413, "too_many_records"),
])
def test_malformed_batches_are_refused_whole(edge, path, body, status, reason):
    answer = post(edge.port, f"/submit/telemetry/{path}", body)
    assert answer.status == status and answer.text.startswith(f"{reason}:")
    assert edge.records() == []


def test_corrupt_gzip_batch_is_400(edge):
    answer = post(edge.port, "/submit/telemetry/batch", b"\x1f\x8bnope", {"Content-Encoding": "gzip"})
    assert answer.status == 400 and answer.text.startswith("corrupt_gzip:")


def test_record_paths_are_checked_like_single_submissions(edge):
    records = [
        (f"{new_id()}\tsaved/session\tFirefox\t1\trelease\t2", "invalid_character"),
        (f"{new_id()}\t..\tFirefox\t1\trelease\t2", "dot_segment"),
        (f"{new_id()}\tidle\tFire\x00fox\t1\trelease\t2", "invalid_character"),
        (f"{new_id()}\tidle\t{'F' * 300}\t1\trelease\t2", "path_too_long"),
    ]
    body = "\t".join(f"{fields}\t{{}}" for fields, _ in records).encode() + b"\t" + \
        b"\t".join([new_id().encode(), b"idle", b"Fire\xfffox", b"1", b"release", b"2", b"{}"])
    answer = post(edge.port, "/submit/telemetry/batch_dims", body)
    assert [r["reason"] for r in answer.json()["results"]] == [reason for _, reason in records] + [
        "invalid_path_encoding"]
    assert edge.records() == []


def test_batch_records_refused_by_a_full_disk_make_the_answer_503(tmp_path):
    edge = ThreadedEdge(tmp_path, ["receive.min_free_disk_bytes=1000000000000000000"]).start()
    try:
        answer = post(edge.port, "/submit/telemetry/batch", f"{new_id()}\t{{}}".encode())
        assert answer.status == 503 and "retry-after" in answer.headers
        assert answer.text.startswith("disk_full:")
    finally:
        edge.stop()
