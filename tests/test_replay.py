"""telemetry replay: quarantined records go through the real processor again, each once."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

from click.testing import CliRunner

from s3_helpers import bucket, fake_aws_credentials, moto_endpoint, s3_client  # noqa: F401
from process_helpers import DIMS_PATH, FIXTURE_PING, fixture_records, processor_engine, uuid, write_spool
from telemetry_core.cli import cli
from telemetry_core.store.process.holdings import local_holdings
from telemetry_core.store.process.manifests import reconcile
from telemetry_core.store.process.processor import Processor
from telemetry_core.store.process.replay import replay, replay_journal_key, replay_journal_path
from telemetry_core.store.spool.files import SpoolReader, SpoolWriter

KEY = "idle-daily/Firefox/release/23.0.1/20130814063812.20130910.n1.2.log.xz"
#: The fixture ping inflates past this, so it is quarantined as oversized_data.
TOO_SMALL = "process.max_inflated_bytes=1024"
SEPT_10, SEPT_12 = 1378822911255, 1378995711255


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def archive_ids(data_dir: Path, key: str) -> list[str]:
    with lzma.open(data_dir / "archive" / key) as handle:
        return [line.split(b"\t", 1)[0].decode() for line in handle.read().splitlines()]


def process(data_dir: Path, *overrides: str):
    processor = Processor(processor_engine(data_dir, overrides=list(overrides)))
    try:
        return processor.run_once()
    finally:
        processor.close()


def run_cli(data_dir: Path, *args: str):
    config = data_dir / "c.yaml"
    config.write_text(f"data_dir: {data_dir}\nnode_id: n1\n")
    return CliRunner().invoke(cli, [*args, "--config", str(config)])


def quarantine_oversized(data_dir: Path, count: int = 3) -> None:
    write_spool(data_dir, fixture_records(count))
    summary = process(data_dir, TOO_SMALL)
    assert (summary.records_valid, summary.records_invalid) == (0, count)


def test_replay_after_the_fix_publishes_each_record_once_and_again_does_nothing(tmp_path):
    quarantine_oversized(tmp_path)

    done = run_cli(tmp_path, "replay", "--category", "oversized_data")
    assert done.exit_code == 0, done.output
    assert "oversized_data: replayed 3, skipped (already replayed) 0" in done.stdout
    spooled = sorted((tmp_path / "spool" / "finished").iterdir())
    assert len(spooled) == 1
    journal = json.loads(replay_journal_path(tmp_path, spooled[0].name).read_text())
    assert journal["spool"] == spooled[0].name and journal["version"] == 1
    assert journal["records"] == [["_invalid/oversized_data/20130910.n1.1.log.xz", line, uuid(line)]
                                  for line in range(3)]

    summary = process(tmp_path)  # the limit is back to its default: the fix
    assert (summary.records_valid, summary.records_invalid) == (3, 0)
    assert archive_ids(tmp_path, KEY) == [uuid(0), uuid(1), uuid(2)]
    published = tmp_path / "archive" / replay_journal_key("n1", spooled[0].name)
    assert json.loads(published.read_text())["records"] == journal["records"]
    assert not replay_journal_path(tmp_path, spooled[0].name).exists()

    again = run_cli(tmp_path, "replay")
    assert again.exit_code == 0, again.output
    assert "oversized_data: replayed 0, skipped (already replayed) 3" in again.stdout
    assert not list((tmp_path / "spool" / "finished").iterdir())

    checked = run_cli(tmp_path, "reconcile")
    assert checked.exit_code == 0, checked.output
    assert "quarantined: 0 records" in checked.stdout
    assert "replayed: 3 records out of quarantine" in checked.stdout


def test_a_record_quarantined_again_is_a_new_entry(tmp_path):
    quarantine_oversized(tmp_path, 1)
    assert replay(processor_engine(tmp_path)).replayed["oversized_data"] == 1
    process(tmp_path, TOO_SMALL)  # not fixed: the copy is quarantined again
    result = reconcile(processor_engine(tmp_path).publisher(), [uuid(0)])
    assert result.ok and result.quarantined == {"oversized_data": 1} and result.replayed == 1
    second = replay(processor_engine(tmp_path))
    assert (second.replayed["oversized_data"], second.skipped["oversized_data"]) == (1, 1)


def test_replaying_twice_before_processing_spools_once(tmp_path):
    quarantine_oversized(tmp_path, 2)
    engine = processor_engine(tmp_path)
    assert replay(engine).replayed["oversized_data"] == 2
    second = replay(engine)
    assert (second.replayed["oversized_data"], second.skipped["oversized_data"]) == (0, 2)
    assert len(list((tmp_path / "spool" / "finished").iterdir())) == 1
    held = local_holdings(engine)
    assert held.replay_waiting == 2
    process(tmp_path)
    assert archive_ids(tmp_path, KEY) == [uuid(0), uuid(1)]


def test_dry_run_writes_nothing(tmp_path):
    quarantine_oversized(tmp_path)
    before = files_under(tmp_path)
    done = run_cli(tmp_path, "replay", "--dry-run")
    assert done.exit_code == 0, done.output
    assert "oversized_data: would replay 3, skipped (already replayed) 0" in done.stdout
    assert "dry run, nothing written" in done.stdout
    assert files_under(tmp_path) == {**before, "c.yaml": (tmp_path / "c.yaml").read_bytes()}


def test_category_filter_and_duplicates_only_when_named(tmp_path):
    bad = [(f"{uuid(7)}/{DIMS_PATH}", b"[1, 2]")]  # bad_payload
    write_spool(tmp_path, fixture_records(1) + bad)
    write_spool(tmp_path, fixture_records(1), timestamp_ms=SEPT_10 + 1000)  # an exact resubmission: duplicate
    process(tmp_path)
    engine = processor_engine(tmp_path)

    default = replay(engine, dry_run=True)
    assert default.categories == ["bad_payload"] and default.replayed == {"bad_payload": 1}

    named = run_cli(tmp_path, "replay", "--category", "duplicate")
    assert named.exit_code == 0, named.output
    assert "duplicate: replayed 1" in named.stdout and "bad_payload" not in named.stdout
    process(tmp_path)
    # dedup keeps the first copy published once: the replayed duplicate is a duplicate again
    assert archive_ids(tmp_path, "idle-daily/Firefox/release/23.0.1/20130814063812.20130910.n1.1.log.xz") \
        == [uuid(0)]

    unknown = run_cli(tmp_path, "replay", "--category", "no_such_thing")
    assert unknown.exit_code == 2
    assert unknown.stderr.strip().splitlines() == [
        "error: no quarantined records in category no_such_thing; the archive holds: bad_payload, duplicate"]


def test_since_filters_by_receive_day(tmp_path):
    write_spool(tmp_path, fixture_records(1), timestamp_ms=SEPT_10)
    write_spool(tmp_path, fixture_records(1, start=1), timestamp_ms=SEPT_12)
    process(tmp_path, TOO_SMALL)

    done = run_cli(tmp_path, "replay", "--since", "2013-09-11")
    assert done.exit_code == 0, done.output
    assert "oversized_data: replayed 1" in done.stdout
    process(tmp_path)
    assert archive_ids(tmp_path, "idle-daily/Firefox/release/23.0.1/20130814063812.20130912.n1.3.log.xz") \
        == [uuid(1)]
    assert replay(processor_engine(tmp_path), since="2013-09-10").replayed == {"oversized_data": 1}

    bad = run_cli(tmp_path, "replay", "--since", "10/09/2013")
    assert bad.exit_code == 2
    assert bad.stderr.strip() == "error: --since '10/09/2013' is not a date; give a UTC day as YYYY-MM-DD"


def test_corrupt_invalid_files_and_lines_are_named_counted_and_skipped(tmp_path):
    write_spool(tmp_path, fixture_records(1) + [(f"{uuid(7)}/{DIMS_PATH}", b"[1, 2]")])
    process(tmp_path, TOO_SMALL)
    invalid = tmp_path / "archive" / "_invalid"
    broken = invalid / "bad_payload" / "20130910.n1.1.log.xz"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated xz
    odd = invalid / "oversized_data" / "20130910.n9.1.log.xz"
    odd.write_bytes(lzma.compress(b"not a quarantined record\n" + b'-\t{"path": 3}\n'))

    done = run_cli(tmp_path, "replay")
    assert done.exit_code == 1
    assert "error: _invalid/bad_payload/20130910.n1.1.log.xz: unreadable" in done.stderr
    assert "error: _invalid/oversized_data/20130910.n9.1.log.xz: 2 invalid lines skipped" in done.stderr
    assert "1 invalid files unreadable, 2 invalid lines skipped" in done.stderr
    assert "oversized_data: replayed 1" in done.stdout  # the good file still went through
    process(tmp_path)
    assert archive_ids(tmp_path, "idle-daily/Firefox/release/23.0.1/20130814063812.20130910.n1.2.log.xz") \
        == [uuid(0)]


def test_a_journal_whose_spool_file_was_never_written_is_discarded(tmp_path):
    quarantine_oversized(tmp_path, 1)
    engine = processor_engine(tmp_path)
    replay(engine)
    spooled = next((tmp_path / "spool" / "finished").iterdir())
    spooled.unlink()  # replay died between the journal and the spool file
    again = replay(engine)
    assert again.replayed == {"oversized_data": 1} and again.discarded_journals == [f"{spooled.name}.json"]
    process(tmp_path)
    assert archive_ids(tmp_path, KEY) == [uuid(0)]


def test_replayed_bytes_and_metadata_are_exactly_as_quarantined(tmp_path):
    with SpoolWriter(tmp_path / "spool", "n1") as writer:
        writer.append(f"/submit/telemetry/{uuid(1)}/{DIMS_PATH}", FIXTURE_PING.body, client_addr="203.0.113.9",
                      timestamp_ms=SEPT_10)
    process(tmp_path, TOO_SMALL)
    replay(processor_engine(tmp_path))
    (record,) = SpoolReader(next((tmp_path / "spool" / "finished").iterdir()))
    assert (record.path, record.body, record.client_addr, record.timestamp_ms) == (
        f"{uuid(1)}/{DIMS_PATH}", FIXTURE_PING.body, "203.0.113.9", SEPT_10)


def test_spool_files_are_bounded(tmp_path):
    quarantine_oversized(tmp_path, 3)
    report = replay(processor_engine(tmp_path), max_file_bytes=len(FIXTURE_PING.body) + 200)
    assert len(report.spool_files) == 3
    process(tmp_path)
    assert reconcile(processor_engine(tmp_path).publisher(), [uuid(i) for i in range(3)]).ok


def s3_overrides(endpoint: str, bucket_name: str, *extra: str) -> list[str]:
    return ["store.publish.backend=s3", f"store.publish.bucket={bucket_name}", "store.publish.prefix=tel",
            f"store.publish.endpoint_url={endpoint}", "store.publish.retries=2", *extra]


def test_replay_through_s3(tmp_path, moto_endpoint, bucket, s3_client):
    overrides = s3_overrides(moto_endpoint, bucket)
    write_spool(tmp_path, fixture_records(2))
    Processor(processor_engine(tmp_path, overrides=[*overrides, TOO_SMALL])).run_once()
    assert not (tmp_path / "archive").exists()  # everything is in the bucket

    engine = processor_engine(tmp_path, overrides=overrides)
    report = replay(engine, categories=["oversized_data"])
    assert report.replayed == {"oversized_data": 2} and len(report.spool_files) == 1
    processor = Processor(engine)
    assert processor.run_once().records_valid == 2
    processor.close()
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"tel/{replay_journal_key('n1', report.spool_files[0])}" in keys
    assert f"tel/{KEY}" in keys
    assert replay(processor_engine(tmp_path, overrides=overrides)).skipped == {"oversized_data": 2}
    result = reconcile(engine.publisher(), [uuid(0), uuid(1)], held=local_holdings(engine))
    assert result.ok and result.replayed == 2 and not result.quarantined


def test_journal_locations(tmp_path):
    name = "n1.1.1378822911255.1.spool"
    assert replay_journal_path(tmp_path, name) == tmp_path / "state" / "replay" / f"{name}.json"
    assert replay_journal_key("n1", name) == f"_replays/n1/{name}.json"
