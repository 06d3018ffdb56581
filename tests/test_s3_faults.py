"""S3 publishing under faults injected by an HTTP proxy between boto3 and the S3 API server.

Every test checks the two promises that matter: the publish either succeeds
with the right bytes verified in the bucket, or raises PublishError with the
local file untouched; and a wrong object is never left under the key.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from s3_helpers import (bucket, dead_endpoint, fake_aws_credentials, fault_proxy, is_complete,  # noqa: F401
                        is_object_get, is_part_upload, make_publisher, moto_endpoint, s3_client)
from telemetry_core.interfaces import PublishConflict, PublishError
from telemetry_core.store.local import sha256_of
from telemetry_core.store.s3.publisher import ChecksumMismatch

KEY = "idle-daily/Firefox/nightly/25.0a1/20130701.20130702.n1.3.log.xz"


@pytest.fixture
def local_file(tmp_path: Path) -> tuple[str, bytes]:
    data = os.urandom(9000)  # three parts of 4096 bytes
    path = tmp_path / "file.log.xz"
    path.write_bytes(data)
    return str(path), data


def stored(s3_client, bucket: str, key: str = KEY) -> bytes | None:
    try:
        return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3_client.exceptions.NoSuchKey:
        return None


def assert_nothing_left_behind(s3_client, bucket: str, local: str, data: bytes) -> None:
    assert stored(s3_client, bucket) is None
    assert Path(local).read_bytes() == data


def test_server_down_is_a_publish_error_after_retries(bucket, local_file):
    local, data = local_file
    publisher = make_publisher(dead_endpoint(), bucket)
    with pytest.raises(PublishError, match="after 3 attempts.*nothing local was deleted"):
        publisher.publish(local, KEY, checksum=sha256_of(local))
    assert Path(local).read_bytes() == data
    assert publisher.stats.retries == 2 and publisher.stats.failures == 1
    with pytest.raises(PublishError):
        list(publisher.list(""))
    with pytest.raises(PublishError):
        publisher.open(KEY)


def test_a_few_500s_are_retried_to_success(fault_proxy, bucket, s3_client, local_file):
    local, data = local_file
    fault = fault_proxy.arm("status", status=500, times=2)  # retries: 2, so the third attempt of HEAD succeeds
    publisher = make_publisher(fault_proxy.url, bucket)

    published = publisher.publish(local, KEY, checksum=sha256_of(local))

    assert fault.hits == 2 and publisher.stats.retries == 2
    assert published.size == len(data) and stored(s3_client, bucket) == data


def test_a_request_is_made_retries_plus_one_times_in_all(fault_proxy, bucket, s3_client, local_file):
    """One retry policy: botocore does not retry underneath ours, and the publish is not redone on top."""
    local, data = local_file
    fault_proxy.arm("status", status=503, times=10_000, match=is_part_upload)
    publisher = make_publisher(fault_proxy.url, bucket)  # retries: 2
    with pytest.raises(PublishError, match="uploading part 1 .* failed after 3 attempts"):
        publisher.publish(local, KEY, checksum=sha256_of(local))
    seen = [(r.method, is_part_upload(r.method, r.path)) for r in fault_proxy.requests]
    assert seen.count(("PUT", True)) == 3  # the first part, three times; no other part, no second publish
    assert seen.count(("HEAD", False)) == 1 and seen.count(("POST", False)) == 1  # one lookup, one upload begun
    assert publisher.stats.retries == 2 and publisher.stats.failures == 1
    assert_nothing_left_behind(s3_client, bucket, local, data)


def test_500s_that_do_not_stop_end_in_publish_error_and_no_object(fault_proxy, bucket, s3_client, local_file):
    local, data = local_file
    fault_proxy.arm("status", status=500, times=10_000, match=is_complete)
    publisher = make_publisher(fault_proxy.url, bucket)
    with pytest.raises(PublishError, match="InternalError"):
        publisher.publish(local, KEY, checksum=sha256_of(local))
    assert_nothing_left_behind(s3_client, bucket, local, data)
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # aborted


def test_a_slow_answer_to_complete_is_retried_and_recognised_as_done(fault_proxy, bucket, s3_client,
                                                                     local_file):
    local, data = local_file
    # the server completes the upload, but its answer comes after the read timeout
    fault = fault_proxy.arm("delay", seconds=1.2, times=1, match=is_complete)
    publisher = make_publisher(fault_proxy.url, bucket, read_timeout=0.4)

    published = publisher.publish(local, KEY, checksum=sha256_of(local))

    assert fault.hits == 1
    assert published.size == len(data) and stored(s3_client, bucket) == data


def test_slow_part_uploads_are_retried(fault_proxy, bucket, s3_client, local_file):
    local, data = local_file
    fault = fault_proxy.arm("delay", seconds=1.0, times=2, match=is_part_upload)
    publisher = make_publisher(fault_proxy.url, bucket, read_timeout=0.4)
    publisher.publish(local, KEY, checksum=sha256_of(local))
    assert fault.hits == 2
    assert stored(s3_client, bucket) == data


def test_always_slow_is_a_publish_error(fault_proxy, bucket, s3_client, local_file):
    local, data = local_file
    fault_proxy.arm("delay", seconds=0.6, times=10_000)
    publisher = make_publisher(fault_proxy.url, bucket, read_timeout=0.2, retries=1)
    with pytest.raises(PublishError, match="timeout"):
        publisher.publish(local, KEY, checksum=sha256_of(local))
    assert Path(local).read_bytes() == data


def test_a_dropped_connection_is_retried(fault_proxy, bucket, s3_client, local_file):
    local, data = local_file
    fault_proxy.arm("drop", times=2, match=is_part_upload)
    make_publisher(fault_proxy.url, bucket).publish(local, KEY, checksum=sha256_of(local))
    assert stored(s3_client, bucket) == data


def test_a_part_corrupted_on_the_way_is_detected_and_sent_again(fault_proxy, bucket, s3_client, local_file):
    local, data = local_file
    fault = fault_proxy.arm("corrupt_request", times=1, match=is_part_upload)
    publisher = make_publisher(fault_proxy.url, bucket)

    publisher.publish(local, KEY, checksum=sha256_of(local))

    assert fault.hits == 1 and publisher.stats.part_mismatches == 1
    assert stored(s3_client, bucket) == data


def test_parts_that_always_arrive_corrupted_never_become_an_object(fault_proxy, bucket, s3_client, local_file):
    local, data = local_file
    fault_proxy.arm("corrupt_request", times=10_000, match=is_part_upload)
    publisher = make_publisher(fault_proxy.url, bucket)
    with pytest.raises(PublishError, match="corrupted"):
        publisher.publish(local, KEY, checksum=sha256_of(local))
    assert_nothing_left_behind(s3_client, bucket, local, data)
    assert not any(r.path.split("?")[1].startswith("uploadId") and r.method == "POST"
                   for r in fault_proxy.requests if "?" in r.path), "a corrupted upload was completed"


def test_a_download_corrupted_on_the_way_is_detected(fault_proxy, bucket, s3_client, local_file):
    local, data = local_file
    publisher = make_publisher(fault_proxy.url, bucket)
    publisher.publish(local, KEY, checksum=sha256_of(local))
    fault_proxy.arm("corrupt_response", times=1, match=is_object_get)

    with pytest.raises(ChecksumMismatch, match="download was corrupted"):
        with publisher.open(KEY) as stream:
            stream.read()
    with publisher.open(KEY) as stream:  # read it again: fine
        assert stream.read() == data


def test_a_download_that_breaks_off_is_resumed_where_it_stopped(fault_proxy, bucket, s3_client, local_file):
    local, data = local_file
    publisher = make_publisher(fault_proxy.url, bucket)
    publisher.publish(local, KEY, checksum=sha256_of(local))
    fault_proxy.arm("truncate_response", times=1, match=is_object_get)

    with publisher.open(KEY) as stream:
        assert stream.read() == data
    ranges = [r.headers.get("Range") for r in fault_proxy.requests if is_object_get(r.method, r.path)]
    assert ranges[0] is None and ranges[1] == f"bytes={len(data) // 2}-"


def test_write_only_credentials_publish_and_recognise_republish_through_listing(fault_proxy, bucket, s3_client,
                                                                                local_file, tmp_path):
    """Nodes may not read objects (HEAD/GET get 403); they may list keys and ETags."""
    local, data = local_file
    fault_proxy.arm("status", status=403, times=10_000, match=lambda method, path: method == "HEAD")
    publisher = make_publisher(fault_proxy.url, bucket)

    publisher.publish(local, KEY, checksum=sha256_of(local))
    publisher.publish(local, KEY, checksum=sha256_of(local))  # idempotent
    other = tmp_path / "other"
    other.write_bytes(os.urandom(9000))
    with pytest.raises(PublishConflict):
        publisher.publish(str(other), KEY, checksum=sha256_of(other))

    assert stored(s3_client, bucket) == data
    assert publisher.stats.published == 1 and publisher.stats.already_published == 1
    assert any(r.fault == "status" for r in fault_proxy.requests)


def test_credentials_that_can_neither_read_nor_list_get_a_clear_error(fault_proxy, bucket, local_file):
    local, _ = local_file
    fault_proxy.arm("status", status=403, times=10_000,
                    match=lambda method, path: method == "HEAD" or "list-type" in path)
    with pytest.raises(PublishError, match="s3:ListBucket"):
        make_publisher(fault_proxy.url, bucket).publish(local, KEY, checksum=sha256_of(local))


def test_a_key_written_by_someone_else_during_our_upload_is_not_overwritten(fault_proxy, bucket, s3_client,
                                                                            local_file):
    local, data = local_file

    def other_writer() -> None:
        s3_client.put_object(Bucket=bucket, Key=KEY, Body=b"the other writer won the race")

    fault_proxy.arm("before", before=other_writer, times=1, match=is_complete)
    with pytest.raises(PublishConflict):
        make_publisher(fault_proxy.url, bucket).publish(local, KEY, checksum=sha256_of(local))
    assert stored(s3_client, bucket) == b"the other writer won the race"
    assert Path(local).read_bytes() == data


def test_a_missing_bucket_is_not_retried_and_says_what_to_do(moto_endpoint, local_file):
    local, _ = local_file
    publisher = make_publisher(moto_endpoint, "no-such-bucket-here")
    with pytest.raises(PublishError, match="the bucket does not exist; create it or fix store.publish.bucket"):
        publisher.publish(local, KEY, checksum=sha256_of(local))
    assert publisher.stats.retries == 0


def test_access_denied_on_upload_is_not_retried(fault_proxy, bucket, local_file):
    local, _ = local_file
    fault = fault_proxy.arm("status", status=403, times=10_000, match=lambda method, path: method == "POST")
    with pytest.raises(PublishError, match="AccessDenied .*check the credentials and the bucket policy"):
        make_publisher(fault_proxy.url, bucket).publish(local, KEY, checksum=sha256_of(local))
    assert fault.hits == 1


def test_missing_credentials_say_where_credentials_come_from(moto_endpoint, bucket, local_file, monkeypatch):
    local, _ = local_file
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(PublishError, match="no AWS credentials found"):
        make_publisher(moto_endpoint, bucket).publish(local, KEY, checksum=sha256_of(local))


def test_a_download_that_keeps_breaking_off_is_a_publish_error(fault_proxy, bucket, local_file):
    local, _ = local_file
    publisher = make_publisher(fault_proxy.url, bucket)
    publisher.publish(local, KEY, checksum=sha256_of(local))
    fault_proxy.arm("truncate_response", times=10_000, match=is_object_get)
    with pytest.raises(PublishError, match="failed at byte"):
        with publisher.open(KEY) as stream:
            stream.read()


def test_an_undecidable_existing_key_is_a_conflict_never_an_overwrite(fault_proxy, bucket, s3_client, local_file):
    """Write-only credentials see only size and ETag, and SSE-KMS ETags prove nothing: refuse, keep both."""
    local, data = local_file
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=data)
    fault_proxy.arm("status", status=403, times=10_000, match=lambda method, path: method == "HEAD")
    publisher = make_publisher(fault_proxy.url, bucket, encryption="aws:kms")
    with pytest.raises(PublishConflict, match="cannot show it holds"):
        publisher.publish(local, KEY, checksum=sha256_of(local))
    assert stored(s3_client, bucket) == data
