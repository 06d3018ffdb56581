"""The S3 publisher against a real S3 API server (moto's standalone server on loopback)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from s3_helpers import (bucket, fake_aws_credentials, make_publisher,  # noqa: F401
                        moto_endpoint, s3_client)
from telemetry_core.errors import ConfigError
from telemetry_core.interfaces import PublishConflict, PublishError, StoredObject
from telemetry_core.store.local import sha256_of
from telemetry_core.store.s3.publisher import S3Publisher, S3Settings, normalize_prefix
from telemetry_core.store.s3.digests import digest_file

KEY = "saved-session/Firefox/release/23.0/20130101.20130615.node1.7.log.xz"


def write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def test_publish_uploads_verifies_and_reports_the_object(moto_endpoint, bucket, s3_client, tmp_path):
    data = os.urandom(10_000)  # three parts of 4096 bytes
    local = write(tmp_path / "f.xz", data)
    publisher = make_publisher(moto_endpoint, bucket, prefix="telemetry")

    published = publisher.publish(local, KEY, checksum=sha256_of(local))

    assert published.key == KEY and published.size == len(data)
    assert published.checksum == f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert published.url == f"s3://{bucket}/telemetry/{KEY}"
    assert publisher.uri == f"s3://{bucket}/telemetry/"
    stored = s3_client.get_object(Bucket=bucket, Key=f"telemetry/{KEY}")
    assert stored["Body"].read() == data
    assert stored["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert stored["ETag"].strip('"') == digest_file(local, 4096).multipart_etag()
    assert stored["ETag"].strip('"').endswith("-3")  # really a multipart upload
    assert stored["ServerSideEncryption"] == "AES256"
    assert Path(local).read_bytes() == data  # the caller deletes the local file, not the publisher
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_small_and_empty_files_are_one_part(moto_endpoint, bucket, s3_client, tmp_path):
    publisher = make_publisher(moto_endpoint, bucket)
    for name, data in (("small", b"tiny"), ("empty", b"")):
        local = write(tmp_path / name, data)
        publisher.publish(local, f"k/{name}", checksum=sha256_of(local))
        stored = s3_client.get_object(Bucket=bucket, Key=f"k/{name}")
        assert stored["Body"].read() == data
        assert stored["ETag"].strip('"').endswith("-1") == (data != b"")


def test_republishing_the_same_bytes_is_an_idempotent_success(moto_endpoint, bucket, s3_client, tmp_path):
    local = write(tmp_path / "f", os.urandom(5000))
    publisher = make_publisher(moto_endpoint, bucket)
    first = publisher.publish(local, KEY, checksum=sha256_of(local))
    modified = s3_client.head_object(Bucket=bucket, Key=KEY)["LastModified"]

    again = publisher.publish(local, KEY, checksum=sha256_of(local))

    assert again == first
    assert s3_client.head_object(Bucket=bucket, Key=KEY)["LastModified"] == modified
    assert publisher.stats.already_published == 1


def test_republish_after_a_part_size_change_is_still_recognised(moto_endpoint, bucket, tmp_path):
    local = write(tmp_path / "f", os.urandom(9000))
    make_publisher(moto_endpoint, bucket, part_size=4096).publish(local, KEY, checksum=sha256_of(local))
    again = make_publisher(moto_endpoint, bucket, part_size=2048).publish(local, KEY, checksum=sha256_of(local))
    assert again.size == 9000


def test_different_bytes_under_an_existing_key_conflict_and_nothing_is_overwritten(
        moto_endpoint, bucket, s3_client, tmp_path):
    original = write(tmp_path / "a", b"original bytes")
    other = write(tmp_path / "b", b"other bytes!!!")  # same size, different content
    publisher = make_publisher(moto_endpoint, bucket)
    publisher.publish(original, KEY, checksum=sha256_of(original))

    with pytest.raises(PublishConflict, match="different content"):
        publisher.publish(other, KEY, checksum=sha256_of(other))
    assert s3_client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == b"original bytes"


def test_a_key_written_by_another_tool_with_other_bytes_conflicts(moto_endpoint, bucket, s3_client, tmp_path):
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=b"written elsewhere")
    local = write(tmp_path / "a", b"ours")
    with pytest.raises(PublishConflict):
        make_publisher(moto_endpoint, bucket).publish(local, KEY, checksum=sha256_of(local))
    assert s3_client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == b"written elsewhere"


def test_a_key_written_by_another_tool_with_the_same_bytes_is_accepted(moto_endpoint, bucket, s3_client,
                                                                       tmp_path):
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=b"same bytes")  # single-part: ETag is the MD5
    local = write(tmp_path / "a", b"same bytes")
    assert make_publisher(moto_endpoint, bucket).publish(local, KEY, checksum=sha256_of(local)).size == 10


def test_a_wrong_checksum_argument_is_refused_before_anything_is_uploaded(moto_endpoint, bucket, s3_client,
                                                                          tmp_path):
    local = write(tmp_path / "a", b"content")
    with pytest.raises(PublishError, match="changed after it was written"):
        make_publisher(moto_endpoint, bucket).publish(local, KEY, checksum="sha256:" + "0" * 64)
    assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket)


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "../up", "a//b", "a/./b", "dir/", "back\\slash",
                                 "nul\0byte"])
def test_hostile_keys_are_refused(moto_endpoint, bucket, s3_client, tmp_path, key):
    local = write(tmp_path / "a", b"x")
    publisher = make_publisher(moto_endpoint, bucket, prefix="safe")
    with pytest.raises(PublishError, match="unsafe key"):
        publisher.publish(local, key, checksum=sha256_of(local))
    with pytest.raises(PublishError, match="unsafe key"):
        publisher.open(key)
    assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket)


def test_keys_with_unusual_but_safe_characters_round_trip(moto_endpoint, bucket, tmp_path):
    publisher = make_publisher(moto_endpoint, bucket)
    key = "idle-daily/Fire fox/rel+ease/23.0%20/ünï.2013.n.1.log.xz"
    local = write(tmp_path / "a", b"payload")
    publisher.publish(local, key, checksum=sha256_of(local))
    assert [o.key for o in publisher.list("idle-daily/")] == [key]
    with publisher.open(key) as stream:
        assert stream.read() == b"payload"


def test_open_streams_and_verifies(moto_endpoint, bucket, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    local = write(tmp_path / "big", data)
    publisher = make_publisher(moto_endpoint, bucket, part_size=1024 * 1024)
    publisher.publish(local, KEY, checksum=sha256_of(local))

    with publisher.open(KEY) as stream:
        first = stream.read(1000)  # a prefix only: nothing forces the whole object into memory
        assert first == data[:1000]
        rest = stream.read()
    assert first + rest == data


def test_open_of_a_missing_key_is_file_not_found(moto_endpoint, bucket):
    with pytest.raises(FileNotFoundError):
        make_publisher(moto_endpoint, bucket).open("no/such/key")


def test_exists(moto_endpoint, bucket, tmp_path):
    publisher = make_publisher(moto_endpoint, bucket, prefix="p/")
    local = write(tmp_path / "a", b"x")
    assert not publisher.exists(KEY)
    publisher.publish(local, KEY, checksum=sha256_of(local))
    assert publisher.exists(KEY)
    assert not publisher.exists(KEY + ".other")


def test_list_paginates_and_strips_the_prefix(moto_endpoint, bucket, s3_client):
    for index in range(25):
        s3_client.put_object(Bucket=bucket, Key=f"pre/saved-session/F/r/{index:03d}.log.xz", Body=b"x" * index)
    s3_client.put_object(Bucket=bucket, Key="elsewhere/saved-session/x", Body=b"no")
    publisher = make_publisher(moto_endpoint, bucket, prefix="pre/", page_size=7)

    listed = list(publisher.list("saved-session/"))

    assert listed == [StoredObject(f"saved-session/F/r/{i:03d}.log.xz", i) for i in range(25)]
    assert all(abs(item.modified - time.time()) < 3600 for item in listed)  # LastModified, for reconcile
    assert list(publisher.list("saved-session/F/r/01")) == [
        StoredObject(f"saved-session/F/r/{i:03d}.log.xz", i) for i in range(10, 20)]
    assert list(publisher.list("nothing/")) == []


def test_list_dirs_pushes_the_filter_down_with_a_delimiter(moto_endpoint, bucket, s3_client):
    for channel in ("aurora", "beta", "nightly", "release"):
        for index in range(3):
            s3_client.put_object(Bucket=bucket, Key=f"saved-session/Firefox/{channel}/23.0/{index}.log.xz",
                                 Body=b"x")
    s3_client.put_object(Bucket=bucket, Key="_invalid/corrupted_data/a.log.xz", Body=b"x")
    publisher = make_publisher(moto_endpoint, bucket, page_size=2)

    assert list(publisher.list_dirs("")) == ["_invalid/", "saved-session/"]
    assert list(publisher.list_dirs("saved-session/Firefox/")) == [
        f"saved-session/Firefox/{c}/" for c in ("aurora", "beta", "nightly", "release")]
    assert list(publisher.list_dirs("saved-session/Firefox/beta/23.0/")) == []
    with pytest.raises(ValueError):
        list(publisher.list_dirs("saved-session"))


def test_more_than_a_thousand_keys_are_listed(moto_endpoint, bucket, s3_client):
    for index in range(1005):
        s3_client.put_object(Bucket=bucket, Key=f"d/{index:05d}", Body=b"")
    publisher = make_publisher(moto_endpoint, bucket)
    assert len(list(publisher.list("d/"))) == 1005


def test_settings_validate_bucket_prefix_and_encryption():
    assert normalize_prefix("") == "" and normalize_prefix("a/b") == "a/b/" and normalize_prefix("a/") == "a/"
    for prefix in ("/abs", "a//b", "a/../b"):
        with pytest.raises(ConfigError):
            normalize_prefix(prefix)
    with pytest.raises(ConfigError, match="bucket name"):
        S3Settings(bucket="Not_A_Bucket")
    with pytest.raises(ConfigError, match="aws:kms"):
        S3Settings(bucket="ok-bucket", kms_key_id="arn:aws:kms:us-east-1:123456789012:key/x")


def test_the_plugin_builds_the_publisher_from_config(make_engine, pm, moto_endpoint, bucket, tmp_path):
    from telemetry_core.store.s3 import publisher as publish_s3

    pm.register(publish_s3.S3Plugin())
    engine = make_engine(**{"store.publish.backend": "s3", "store.publish.bucket": bucket,
                            "store.publish.prefix": "tel", "store.publish.endpoint_url": moto_endpoint,
                            "store.publish.part_size_mb": 5, "store.publish.retries": 1})
    publisher = engine.publisher()
    assert isinstance(publisher, S3Publisher)
    assert publisher is engine.publisher()  # one client per engine
    assert publisher.uri == f"s3://{bucket}/tel/"
    assert publisher.settings.part_size == 5 * 1024 * 1024 and publisher.settings.retries == 1
    local = write(tmp_path / "a", b"via the engine")
    assert publisher.publish(local, KEY, checksum=sha256_of(local)).url == f"s3://{bucket}/tel/{KEY}"


def test_the_plugin_needs_a_bucket(make_engine, pm):
    from telemetry_core.store.s3 import publisher as publish_s3

    pm.register(publish_s3.S3Plugin())
    engine = make_engine(**{"store.publish.backend": "s3"})
    with pytest.raises(ConfigError, match="store.publish.bucket"):
        engine.publisher()


def test_the_plugin_stays_out_of_the_way_of_other_backends(make_engine, pm):
    from telemetry_core.store.s3 import publisher as publish_s3

    pm.register(publish_s3.S3Plugin())
    with pytest.raises(ConfigError, match="no installed plugin provides publish backend 'local'"):
        make_engine().publisher()


def test_with_sse_kms_etags_are_not_trusted_and_a_foreign_object_is_hashed(moto_endpoint, bucket, s3_client,
                                                                         tmp_path):
    """SSE-KMS ETags are not MD5s on AWS: an object without our metadata is compared by reading it."""
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=b"same bytes")
    s3_client.put_object(Bucket=bucket, Key=KEY + ".2", Body=b"diff bytes")
    local = write(tmp_path / "a", b"same bytes")
    publisher = make_publisher(moto_endpoint, bucket, encryption="aws:kms")
    assert not publisher.settings.etag_is_md5

    assert publisher.publish(local, KEY, checksum=sha256_of(local)).size == 10
    with pytest.raises(PublishConflict, match="different content"):
        publisher.publish(local, KEY + ".2", checksum=sha256_of(local))


def test_our_own_kms_uploads_carry_the_key(moto_endpoint, bucket, s3_client, tmp_path):
    key_id = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    local = write(tmp_path / "a", os.urandom(5000))
    publisher = make_publisher(moto_endpoint, bucket, encryption="aws:kms", kms_key_id=key_id)
    publisher.publish(local, KEY, checksum=sha256_of(local))
    head = s3_client.head_object(Bucket=bucket, Key=KEY)
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == key_id
    assert publisher.publish(local, KEY, checksum=sha256_of(local)).size == 5000  # metadata decides
