"""The processor publishing to S3 (through the fault proxy), then reconcile and the retention sweep."""

from __future__ import annotations

import lzma
import os
import time

from s3_helpers import (bucket, fake_aws_credentials, fault_proxy, is_part_upload, moto_endpoint,  # noqa: F401
                        s3_client)
from process_helpers import fixture_records, processor_engine, uuid, write_spool
from telemetry_core.store.process.manifests import reconcile
from telemetry_core.store.process.processor import Processor
from telemetry_core.ops.retention import retention_areas, sweep

KEY = "idle-daily/Firefox/release/23.0.1/20130814063812.20130910.n1.1.log.xz"


def s3_overrides(endpoint: str, bucket_name: str, *extra: str) -> list[str]:
    return ["store.publish.backend=s3", f"store.publish.bucket={bucket_name}", "store.publish.prefix=tel",
            f"store.publish.endpoint_url={endpoint}", "store.publish.retries=2", *extra]


def test_processed_records_land_in_the_bucket_verified_despite_faults(tmp_path, fault_proxy, bucket, s3_client):
    write_spool(tmp_path, fixture_records(3))
    fault_proxy.arm("status", status=500, times=2)
    fault_proxy.arm("corrupt_request", times=1, match=is_part_upload)
    engine = processor_engine(tmp_path, overrides=s3_overrides(fault_proxy.url, bucket,
                                                               "store.publish.keep_local_days=1"))

    summary = Processor(engine).run_once()

    assert summary.records_valid == 3
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["tel/_manifests/n1/1.json", f"tel/{KEY}"]
    body = lzma.decompress(s3_client.get_object(Bucket=bucket, Key=f"tel/{KEY}")["Body"].read())
    assert [line.split(b"\t")[0].decode() for line in body.splitlines()] == [uuid(0), uuid(1), uuid(2)]
    assert engine.publisher().stats.part_mismatches == 1
    assert reconcile(engine.publisher(), [uuid(i) for i in range(3)]).ok

    # keep_local_days: the local copy stays until the sweep finds it old enough
    local_copy = tmp_path / "archive" / KEY
    assert local_copy.exists()
    assert sweep(retention_areas(engine.config)).files == 0
    old = time.time() - 2 * 86400
    os.utime(local_copy, (old, old))
    assert sweep(retention_areas(engine.config)).files == 1
    assert not local_copy.exists()
    assert s3_client.head_object(Bucket=bucket, Key=f"tel/{KEY}")["ContentLength"] > 0


def test_storage_down_keeps_the_input_for_later(tmp_path, moto_endpoint, bucket, s3_client):
    from s3_helpers import dead_endpoint

    write_spool(tmp_path, fixture_records(2))
    down = processor_engine(tmp_path, overrides=s3_overrides(dead_endpoint(), bucket, "store.publish.retries=0",
                                                              "process.retry_backoff=1"))
    summary = Processor(down).run_once()
    assert len(summary.retry_later) == 1  # kept, to be tried again
    assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket)
    assert not any((tmp_path / "failed").glob("*.spool"))

    up = processor_engine(tmp_path, overrides=s3_overrides(moto_endpoint, bucket))
    Processor(up).run_once(wait_for_retries=True)
    assert reconcile(up.publisher(), [uuid(0), uuid(1)]).ok
