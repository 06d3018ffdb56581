"""The edge's pure parts: path rules, bounded gzip, batch splitting, client addresses, metric merging,
and the spool writer built from config."""

from __future__ import annotations

import gzip
import zlib

import pytest

from telemetry_core.compress import bounded_gzip
from telemetry_core.config.loader import read_config, validate
from telemetry_core.receive.app import decode_submission_path
from telemetry_core.receive.batch import split_batch
from telemetry_core.receive.node_metrics import merge_trees
from telemetry_core.errors import ConfigError
from telemetry_core.receive.client_addr import ClientAddressPolicy
from telemetry_core.receive.paths import parse_submission_path
from telemetry_core.records import Rejection, SubmissionPath
from telemetry_core.store.spool.files import FsyncPolicy

ID = "17caa68c-25f5-450a-9cce-7d31318846d8"


def test_the_two_bagheera_path_forms():
    assert parse_submission_path(ID) == SubmissionPath(ID, {})
    assert parse_submission_path(f"{ID}/idle-daily/Firefox/23.0.1/release/20130814063812") == SubmissionPath(
        ID, {"reason": "idle-daily", "appName": "Firefox", "appVersion": "23.0.1",
             "appUpdateChannel": "release", "appBuildID": "20130814063812"})


@pytest.mark.parametrize("path, reason", [
    ("", "empty_path"), (f"{ID}/a", "wrong_segment_count"), (f"{ID}/a/b/c/d/e/f", "wrong_segment_count"),
    (f"{ID}/a//c/d/e", "empty_segment"), (f"{ID}/../b/c/d/e", "dot_segment"), (f"{ID}/a\\b/c/d/e/f", "invalid_character"),
    (f"{ID}/a/b\u0085/c/d/e", None), (f"{ID[:-1]}", "invalid_id"), (f"{ID}0", "invalid_id"),
])
def test_path_rules(path, reason):
    result = parse_submission_path(path)
    if reason is None:
        assert isinstance(result, SubmissionPath)
    else:
        assert isinstance(result, Rejection) and (result.status, result.reason) == (400, reason)


@pytest.mark.parametrize("raw, expected", [
    (f"/submit/telemetry/{ID}", ID),
    (f"/submit/telemetry/{ID}?v=4", ID),
    (f"/submit/telemetry/{ID}/saved%2Dsession/Fire%20fox/1/r/2", f"{ID}/saved-session/Fire fox/1/r/2"),
    ("/submit/telemetry/caf%C3%A9", "café"),
])
def test_decode_submission_path(raw, expected):
    assert decode_submission_path(raw, 1024) == expected


@pytest.mark.parametrize("raw, reason", [
    ("/submit/telemetry/a%2fb", "invalid_character"), ("/submit/telemetry/%ff", "invalid_path_encoding"),
    ("/submit/telemetry/" + "a" * 3100, "path_too_long"), ("/submit/telemetry/" + "a" * 1025, "path_too_long"),
])
def test_decode_submission_path_refusals(raw, reason):
    assert decode_submission_path(raw, 1024).reason == reason


def test_bounded_gzip_inflates_multi_member_streams_within_the_limit():
    body = gzip.compress(b"a" * 1000) + gzip.compress(b"b" * 1000)
    assert bounded_gzip.inflate(body, 2000) == b"a" * 1000 + b"b" * 1000
    assert bounded_gzip.check(body, 2000) == 2000
    with pytest.raises(bounded_gzip.GzipError, match="more than 1999 bytes") as caught:
        bounded_gzip.check(body, 1999)
    assert caught.value.reason == "inflated_too_large"


def test_bounded_gzip_stops_a_bomb_after_the_limit():
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    bomb = b"".join(compressor.compress(bytes(1 << 20)) for _ in range(64)) + compressor.flush()
    with pytest.raises(bounded_gzip.GzipError) as caught:
        bounded_gzip.inflate(bomb, 100_000)
    assert caught.value.reason == "inflated_too_large"


@pytest.mark.parametrize("body, message", [
    (b"", "not gzip"), (b"{}", "not gzip"), (gzip.compress(b"x" * 100)[:-4], "cut short"),
    (gzip.compress(b"x") + b"junk", "garbage after"), (b"\x1f\x8b\x08\x00" + b"\xff" * 20, "damaged"),
])
def test_bounded_gzip_names_what_is_wrong(body, message):
    with pytest.raises(bounded_gzip.GzipError, match=message) as caught:
        bounded_gzip.check(body, 1 << 20)
    assert caught.value.reason == "corrupt_gzip"


def test_split_batch():
    records = split_batch(f"{ID}\t{{}}\t{ID}\t[1]\n".encode(), "batch", 10)
    assert [(r.path, r.body, r.problem) for r in records] == [(ID, b"{}", None), (ID, b"[1]", None)]
    assert split_batch(b"a\tb\tc", "batch", 10).reason == "malformed_batch"
    assert split_batch(b"a\tb\tc\td", "batch", 1).reason == "too_many_records"


def test_client_address_policy():
    policy = ClientAddressPolicy(True, ["10.0.0.0/8", "::1"])
    assert policy.client_addr("192.0.2.1", "198.51.100.1") == "192.0.2.1"
    assert policy.client_addr("10.0.0.1", "198.51.100.1, 10.0.0.2") == "198.51.100.1"
    assert policy.client_addr("::1", "2001:db8::1") == "2001:db8::1"
    assert policy.client_addr("10.0.0.1", "10.0.0.3, 10.0.0.2") == "10.0.0.3"
    assert policy.client_addr("10.0.0.1", "") == "10.0.0.1"
    assert policy.client_addr("10.0.0.1", "garbage") == "10.0.0.1"
    assert policy.stats.bad_forwarded_for == 1
    assert ClientAddressPolicy(False).client_addr("192.0.2.1", None) is None
    assert ClientAddressPolicy(True).client_addr("192.0.2.1", "198.51.100.1") == "192.0.2.1"


def test_merge_trees_adds_counters_and_combines_latency_bounds():
    merged = merge_trees([
        {"edge": {"accepted": 2, "rejected": {"a": 1}, "latency": {"count": 2, "sum": 1.0, "min": 0.1, "max": 0.9,
                                                                   "median": 0.5}}},
        {"edge": {"accepted": 3, "rejected": {"b": 2}, "latency": {"count": 1, "sum": 2.0, "min": 0.05, "max": 2.0,
                                                                   "99percentile": 2.0}}},
    ])
    assert merged == {"edge": {"accepted": 5, "rejected": {"a": 1, "b": 2},
                               "latency": {"count": 3, "sum": 3.0, "min": 0.05, "max": 2.0}}}


def test_spool_writer_from_config(make_engine):
    from telemetry_core.store.spool import writer_plugin as spool_store

    engine = make_engine(spool_store, **{"node_id": "n1", "receive.spool.fsync": "always",
                                         "receive.spool.max_file_bytes": 4096, "receive.max_path_bytes": 512,
                                         "receive.max_inflated_bytes": 2 ** 20})
    writer = engine.spool_writer(worker=0)
    assert writer.fsync is FsyncPolicy.ALWAYS and writer.max_file_bytes == 4096
    assert writer.spool_dir == engine.config.data_dir / "spool"
    assert (writer.limits.max_path_bytes, writer.limits.max_body_bytes) == (512, 2 ** 20)
    writer.close()


def test_receive_config_is_checked():
    with pytest.raises(ConfigError, match="receive.trusted_proxies: 'proxy.example' is not an IP address"):
        validate(read_config(None, ["receive.trusted_proxies=[proxy.example]"]))
    with pytest.raises(ConfigError, match="receive.spool.fsync"):
        validate(read_config(None, ["receive.spool.fsync=sometimes"]))
    with pytest.raises(ConfigError, match="receive.max_body_bytes: 20000000 is too large"):
        validate(read_config(None, ["receive.max_body_bytes=20000000"]))
