"""MapReduce over S3 (moto's standalone server) with the local executor: same answers as on
local files, listings pushed down to key prefixes, objects streamed (nothing downloaded)."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from mapreduce_helpers import FILTERS, JOBS, archive_files, as_ints, build_dataset, read_output
from s3_helpers import (direct_client, fake_aws_credentials, fault_proxy, make_publisher,  # noqa: F401
                        moto_endpoint, s3_client)
from telemetry_core.reduce.filters import DimensionFilter
from telemetry_core.reduce.runner import run_job
from telemetry_core.store.local import sha256_of

PREFIX = "telemetry/"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("mapreduce-s3"))


def upload(dataset, endpoint: str, bucket_name: str) -> None:
    """Publish every archive file with the real S3 publisher (verified uploads, sha256 metadata)."""
    publisher = make_publisher(endpoint, bucket_name, prefix=PREFIX)
    for path in archive_files(dataset.archive):
        publisher.publish(str(path), path.relative_to(dataset.archive).as_posix(), checksum=sha256_of(path))


@pytest.fixture(scope="module")
def bucket(dataset, moto_endpoint):  # noqa: F811
    """One bucket holding the dataset's archive, uploaded once for the module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        name = "mapreduce-archive"
        direct_client(moto_endpoint).create_bucket(Bucket=name)
        upload(dataset, moto_endpoint, name)
    return name


@pytest.fixture
def s3_engine(dataset, moto_endpoint, bucket, tmp_path):  # noqa: F811
    def build(endpoint: str = moto_endpoint, *more: str):
        return dataset.engine("store.publish.backend=s3", f"store.publish.bucket={bucket}",
                              f"store.publish.prefix={PREFIX}", f"store.publish.endpoint_url={endpoint}",
                              "store.publish.retries=1", "store.publish.read_timeout=5", *more,
                              data_dir=tmp_path / "node")
    return build


@pytest.mark.parametrize("job, expected", [
    ("count_by_day", lambda d: d.count_by_day()),
    ("os_distribution", lambda d: d.os_distribution()),
    ("histogram_aggregate", lambda d: d.histogram_totals()),
])
def test_jobs_on_s3_give_the_same_answers(dataset, s3_engine, bucket, tmp_path, job, expected):  # noqa: F811
    engine = s3_engine()
    output = tmp_path / "out.txt"
    stats = run_job(engine, job_path=JOBS / f"{job}.py", filter_path=FILTERS / "all.json", output=output, mappers=2,
                    reducers=2)
    assert stats["input"] == f"s3://{bucket}/{PREFIX}"
    assert stats["errors"] == 0 and stats["records"] == len(dataset.stored())
    assert as_ints(read_output(output)) == expected(dataset)
    # streamed: nothing was written under the node's data directory but the (removed) work area
    node = tmp_path / "node"
    assert [p for p in node.rglob("*") if p.is_file() and "metrics" not in p.parts] == []
    assert not list((node / "mapreduce").iterdir())


def test_dedup_reads_the_ledger_from_s3(dataset, s3_engine, tmp_path):
    output = tmp_path / "out.txt"
    stats = run_job(s3_engine(), job_path=JOBS / "count_by_day.py", filter_path=FILTERS / "all.json",
                    output=output, dedup=True)
    assert as_ints(read_output(output)) == dataset.count_by_day(dataset.live())
    assert stats["skipped"] == len(dataset.stored()) - len(dataset.live())


def test_s3_listing_is_pushed_down(dataset, s3_engine, fault_proxy, tmp_path):  # noqa: F811
    engine = s3_engine(fault_proxy.url)
    flt = DimensionFilter.from_json({"dimensions": [
        {"field_name": "reason", "allowed_values": ["idle-daily"]},
        {"field_name": "appUpdateChannel", "allowed_values": ["nightly"]},
        {"field_name": "appBuildID", "allowed_values": ["20130910030205"]}]}, engine.schema)
    source = engine.reduce_input(uri=engine.publisher().uri)
    fault_proxy.requests.clear()
    items = list(source.list(flt))
    expected = {p.dims() for p in dataset.stored()
                if p.reason == "idle-daily" and p.channel == "nightly" and p.build == "20130910030205"}
    assert {item.dims for item in items} == expected
    prefixes = []
    for request in fault_proxy.requests:
        query = parse_qs(urlsplit(request.path).query)
        assert request.method == "GET" and "list-type" in query  # listing only, no object read
        prefixes.append(unquote(query.get("prefix", [""])[0]))
    assert prefixes[0] == PREFIX
    assert not any(p.startswith((PREFIX + "saved-session", PREFIX + "_")) for p in prefixes)
    assert not any("/release/" in p or "/beta/" in p or "/aurora/" in p for p in prefixes)
    assert f"{PREFIX}idle-daily/Firefox/nightly/26.0a1/20130910030205." in prefixes


def test_unreadable_objects_are_counted_and_the_rest_is_read(dataset, s3_engine, s3_client, bucket,  # noqa: F811
                                                             fault_proxy, tmp_path):  # noqa: F811
    victim = next(p for p in dataset.stored() if p.channel == "beta")
    key = f"{PREFIX}{'/'.join(victim.dims()[:4])}/{victim.build}.{victim.submission_date}."
    broken = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix=key)["Contents"]][0]
    fault_proxy.arm("status", times=1000, status=500,
                    match=lambda method, path: method == "GET" and "list-type" not in path and unquote(path).endswith(broken))
    engine = s3_engine(fault_proxy.url)
    output = tmp_path / "out.txt"
    stats = run_job(engine, job_path=JOBS / "count_by_day.py", filter_path=FILTERS / "all.json", output=output,
                    mappers=2)
    assert list(stats["file_errors"]) == [broken[len(PREFIX):]], stats["file_errors"]
    assert "500" in stats["file_errors"][broken[len(PREFIX):]] or "InternalError" in stats["file_errors"][
        broken[len(PREFIX):]]
    lost = [p for p in dataset.stored() if f"{'/'.join(p.dims()[:4])}/{p.build}.{p.submission_date}." in broken]
    got = as_ints(read_output(output))
    assert sum(got.values()) == len(dataset.stored()) - len(lost) and lost
