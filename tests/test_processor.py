"""The processor: spool files in, partitioned compressed published files out, crash-safe."""

from __future__ import annotations

import base64
import gzip
import json
import lzma
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from telemetry_core import hookimpl
from telemetry_core.errors import RecordError
from telemetry_core.interfaces import PublishError
from telemetry_core.store.process.manifests import reconcile
from telemetry_core.metrics.stats import snapshot
from telemetry_core.store.process.state import ProcessorLocked
from telemetry_core.store.process.processor import Processor, processor_lock

from process_helpers import DIMS_PATH, FIXTURE_PING, fixture_records, processor_engine, uuid, write_spool

KEY = "idle-daily/Firefox/release/23.0.1/20130814063812.20130910.n1.1.log.xz"


def read_archive(data_dir: Path, key: str) -> list[tuple[str, dict]]:
    with lzma.open(data_dir / "archive" / key) as handle:
        return [(line.split(b"\t", 1)[0].decode(), json.loads(line.split(b"\t", 1)[1]))
                for line in handle.read().splitlines()]


def archive_files(data_dir: Path) -> list[str]:
    root = data_dir / "archive"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_valid_records_land_partitioned_and_compressed(tmp_path):
    write_spool(tmp_path, fixture_records(3))
    summary = Processor(processor_engine(tmp_path)).run_once()
    assert (summary.files, summary.records_valid, summary.records_invalid) == (1, 3, 0)
    assert archive_files(tmp_path) == ["_manifests/n1/1.json", KEY]
    rows = read_archive(tmp_path, KEY)
    assert [record_id for record_id, _ in rows] == [uuid(0), uuid(1), uuid(2)]
    assert rows[0][1]["info"]["revision"] == "http://hg.mozilla.org/releases/mozilla-release/rev/a55c55edf302"
    assert not list((tmp_path / "spool" / "finished").iterdir())
    assert not list((tmp_path / "work").iterdir())


def test_values_outside_the_schema_become_other(tmp_path):
    write_spool(tmp_path, [(f"{uuid(1)}/idle-daily/Netscape/4.0/release/2000", FIXTURE_PING.body)])
    Processor(processor_engine(tmp_path)).run_once()
    assert "idle-daily/OTHER/release/4.0/2000.20130910.n1.1.log.xz" in archive_files(tmp_path)


def test_id_only_paths_take_dimensions_from_the_payload(tmp_path):
    write_spool(tmp_path, [(uuid(7), FIXTURE_PING.body)])
    Processor(processor_engine(tmp_path)).run_once()
    assert KEY in archive_files(tmp_path)


def gzip_bomb(inflated: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk, out = b"\0" * (1 << 20), []
    for _ in range(inflated // len(chunk)):
        out.append(compressor.compress(chunk))
    out.append(compressor.flush())
    return b"".join(out)


@pytest.mark.parametrize("path,body,category", [
    (f"{uuid(1)}/{DIMS_PATH}", b"", "empty_data"),
    (f"{uuid(1)}/{DIMS_PATH}", b"{not json", "corrupted_data"),
    (f"{uuid(1)}/{DIMS_PATH}", b"[1, 2]", "bad_payload"),
    (f"{uuid(1)}/{DIMS_PATH}", FIXTURE_PING.body[:-20], "corrupted_data"),  # truncated gzip
    (f"{uuid(1)}/{DIMS_PATH}", gzip.compress(b"") , "empty_data"),
    (f"{uuid(1)}/{DIMS_PATH}", b"\x1f\x8bgarbage", "corrupted_data"),
    (f"{uuid(1)}/{DIMS_PATH}", gzip.compress(b"\xff\xfe{}"), "corrupted_data"),
    ("not-a-uuid/idle-daily/Firefox/23.0.1/release/1", b"{}", "invalid_path"),
    (f"{uuid(1)}/idle-daily/Firefox", b"{}", "invalid_path"),
    (f"{uuid(1)}/idle\x01daily/Firefox/23.0.1/release/1", b"{}", "invalid_control_char"),
    ("", b"{}", "invalid_path"),
])
def test_bad_records_go_to_invalid_with_their_bytes(tmp_path, path, body, category):
    write_spool(tmp_path, [(path, body)] + fixture_records(1))
    summary = Processor(processor_engine(tmp_path)).run_once()
    assert (summary.records_valid, summary.records_invalid) == (1, 1)
    key = f"_invalid/{category}/20130910.n1.1.log.xz"
    assert key in archive_files(tmp_path)
    (record_id, document), = read_archive(tmp_path, key)
    assert document["category"] == category and document["detail"]
    assert base64.b64decode(document["body_b64"]) == body
    assert document["path"] == path and document["received_at_ms"] == 1378822911255
    assert snapshot()["processor"]["invalid"] == {category: 1}


def test_gzip_bomb_is_bounded(tmp_path):
    write_spool(tmp_path, [(f"{uuid(1)}/{DIMS_PATH}", gzip_bomb(200 << 20))])
    summary = Processor(processor_engine(tmp_path, overrides=["process.max_inflated_bytes=1048576"])).run_once()
    assert summary.records_invalid == 1
    assert "_invalid/oversized_data/20130910.n1.1.log.xz" in archive_files(tmp_path)


def test_damaged_spool_records_are_skipped_and_counted(tmp_path):
    path = write_spool(tmp_path, fixture_records(3))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0xFF
    path.write_bytes(bytes(data))
    summary = Processor(processor_engine(tmp_path)).run_once()
    assert summary.records_valid == 2
    manifest = json.loads((tmp_path / "archive/_manifests/n1/1.json").read_text())
    assert manifest["records_read"] == 2 and manifest["skipped"]
    assert reconcile(processor_engine(tmp_path).publisher()).ok


class FailingPublisher:
    """Wraps the local archive; fails the first ``failures`` publishes."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    @hookimpl
    def telemetry_store_publisher(self, engine):
        from telemetry_core.store.local import LocalArchive

        outer = self
        archive = LocalArchive(engine.config.data_dir / "archive")

        class Flaky:
            uri = archive.uri

            def publish(self, local_path, key, *, checksum):
                if outer.failures:
                    outer.failures -= 1
                    raise PublishError("storage is down")
                return archive.publish(local_path, key, checksum=checksum)

            def __getattr__(self, name):
                return getattr(archive, name)

        return Flaky()


def test_operational_failure_keeps_the_input_and_retries(tmp_path):
    write_spool(tmp_path, fixture_records(2))
    engine = processor_engine(tmp_path, FailingPublisher(2), overrides=["process.retry_backoff=60"])
    processor = Processor(engine)
    first = processor.run_once()
    assert first.files == 0 and len(first.retry_later) == 1
    assert list((tmp_path / "work").glob("*.spool"))  # the input is kept
    state = json.loads(next((tmp_path / "work").glob("*.d/state.json")).read_text())
    assert state["phase"] == "compressed" and "storage is down" in state["last_error"]
    assert (state["outages"], state["attempts"]) == (1, 0)  # an outage never sends a file to failed/
    assert snapshot()["processor"]["files_retried"] == 1


def test_an_outage_in_a_once_run_gives_up_for_this_run_only(tmp_path):
    source = write_spool(tmp_path, fixture_records(1))
    summary = Processor(processor_engine(tmp_path, FailingPublisher(99),
                                         overrides=["process.max_attempts=2"])).run_once(wait_for_retries=True)
    assert summary.retry_later == [source.name] and not summary.failed_files
    assert (tmp_path / "work" / source.name).exists()
    assert not list((tmp_path / "failed").iterdir())


def test_retries_until_published(tmp_path):
    write_spool(tmp_path, fixture_records(2))
    processor = Processor(processor_engine(tmp_path, FailingPublisher(2)))
    summary = processor.run_once(wait_for_retries=True)
    assert summary.files == 1 and not summary.failed_files
    assert reconcile(processor.publisher, [uuid(0), uuid(1)]).ok


class BrokenCodec:
    """An xz codec that fails half-way through writing."""

    @hookimpl
    def telemetry_compress_codec(self, name):
        if name != "xz":
            return None

        class Broken:
            name = suffix = "xz"
            levels = range(10)

            def compress(self, source, target, level):
                target.write(b"partial")
                raise OSError("codec crashed mid-file")

            def open_reader(self, source):
                return source

        return Broken()


def test_after_max_attempts_the_input_moves_to_failed(tmp_path):
    source = write_spool(tmp_path, fixture_records(2))
    original = source.read_bytes()
    processor = Processor(processor_engine(tmp_path, BrokenCodec(), overrides=["process.max_attempts=3"]))
    summary = processor.run_once(wait_for_retries=True)
    assert summary.failed_files == [source.name]
    assert (tmp_path / "failed" / source.name).read_bytes() == original
    reason = json.loads((tmp_path / "failed" / f"{source.name}.reason").read_text())
    assert reason["attempts"] == 3 and "codec crashed mid-file" in reason["last_error"]
    assert not list((tmp_path / "work").iterdir())
    assert not list((tmp_path / "archive").rglob("*.xz"))  # the partial output was removed


class ExplodingConverter:
    @hookimpl
    def telemetry_convert_payload(self, record, spec):
        raise RuntimeError("converter bug")


def test_a_plugin_bug_on_a_record_quarantines_that_record_and_the_file_goes_on(tmp_path):
    write_spool(tmp_path, fixture_records(2))
    summary = Processor(processor_engine(tmp_path, ExplodingConverter(),
                                         overrides=["process.max_attempts=1"])).run_once()
    assert summary.failed_files == [] and summary.files == 1 and summary.records_invalid == 2
    assert not list((tmp_path / "failed").iterdir()) and not list((tmp_path / "work").iterdir())
    (invalid,) = (tmp_path / "archive" / "_invalid" / "processing_error").rglob("*.xz")
    lines = lzma.decompress(invalid.read_bytes()).splitlines()
    document = json.loads(lines[0].split(b"\t", 1)[1])
    assert document["detail"] == "convert: RuntimeError: converter bug"  # no traceback in the record
    assert base64.b64decode(document["body_b64"]) == FIXTURE_PING.body


class CrashAt:
    """Simulates a crash (an exception that escapes everything) at a given point."""

    def __init__(self, where: str) -> None:
        self.where = where

    @hookimpl
    def telemetry_store_published(self, published):
        if self.where == "after-first-publish":
            raise SystemExit("crash")


@pytest.mark.parametrize("phase", ["claimed", "processed", "compressed"])
def test_resumes_each_phase_after_a_crash(tmp_path, phase, monkeypatch):
    write_spool(tmp_path, fixture_records(4) + [("bad", b"x")])
    processor = Processor(processor_engine(tmp_path))
    original = {"claimed": Processor._compress, "processed": Processor._publish,
                "compressed": Processor._finish}[phase]
    name = {"claimed": "_compress", "processed": "_publish", "compressed": "_finish"}[phase]

    def crash(*args, **kwargs):
        raise SystemExit("killed")

    monkeypatch.setattr(Processor, name, crash)
    with pytest.raises(SystemExit):
        processor.run_once()
    monkeypatch.setattr(Processor, name, original)
    summary = Processor(processor_engine(tmp_path)).run_once()
    assert summary.files == 1
    result = reconcile(processor.publisher, [uuid(i) for i in range(4)])
    assert result.ok, result
    assert result.records == 5


def test_crash_between_publishes_never_duplicates(tmp_path):
    write_spool(tmp_path, fixture_records(2) + [("bad", b"x")])
    with pytest.raises(SystemExit):
        Processor(processor_engine(tmp_path, CrashAt("after-first-publish"))).run_once()
    Processor(processor_engine(tmp_path)).run_once()
    result = reconcile(processor_engine(tmp_path).publisher(), [uuid(0), uuid(1)])
    assert result.ok and result.files == 2


def test_single_instance_lock(tmp_path):
    engine = processor_engine(tmp_path)
    lock = processor_lock(engine)
    with pytest.raises(ProcessorLocked, match="another processor .* is already running on"):
        processor_lock(engine)
    lock.release()
    processor_lock(engine).release()


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    code = ("import sys, time; sys.path.insert(0, 'tests');"
            "from process_helpers import processor_engine; from telemetry_core.store.process.processor import processor_lock;"
            f"from pathlib import Path; processor_lock(processor_engine(Path({str(tmp_path)!r})));"
            "print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ProcessorLocked):
        processor_lock(processor_engine(tmp_path))
    holder.kill()
    holder.wait()
    processor_lock(processor_engine(tmp_path)).release()


def _drain(data_dir):
    sys.path.insert(0, str(Path(__file__).parent))
    from process_helpers import processor_engine as build

    return Processor(build(Path(data_dir))).run_once().files


def test_several_workers_claim_each_file_once(tmp_path):
    import multiprocessing

    for batch in range(12):
        write_spool(tmp_path, fixture_records(3, start=batch * 3))
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        files = pool.map(_drain, [str(tmp_path)] * 3)
    assert sum(files) == 12
    result = reconcile(processor_engine(tmp_path).publisher(), [uuid(i) for i in range(36)])
    assert result.ok and result.manifests == 12


def test_reconcile_finds_missing_and_tampered_files(tmp_path):
    write_spool(tmp_path, fixture_records(2))
    engine = processor_engine(tmp_path)
    Processor(engine).run_once()
    (tmp_path / "archive" / KEY).unlink()
    result = reconcile(engine.publisher(), [uuid(0), uuid(1), uuid(9)])
    assert not result.ok
    assert any("is missing" in p for p in result.problems)
    assert result.missing_ids == [uuid(9)]


def test_reconcile_counts_files_past_their_retention_as_expired_not_missing(tmp_path, telemetry_cli):
    """The retention sweep deletes old data files of a local archive but keeps every manifest:
    reconcile then reports those files as expired, and still the files of young manifests as missing."""
    for batch in range(2):
        write_spool(tmp_path, fixture_records(2, start=batch * 2))
        Processor(processor_engine(tmp_path)).run_once()
    archive = tmp_path / "archive"
    manifests = sorted((archive / "_manifests").rglob("*.json"))
    assert len(manifests) == 2
    old_files = [archive / entry["key"] for entry in json.loads(manifests[0].read_text())["files"]]
    forty_days_ago = time.time() - 40 * 86400
    for path in [manifests[0], *old_files]:
        os.utime(path, (forty_days_ago, forty_days_ago))
    config = tmp_path / "c.yaml"
    config.write_text(f"data_dir: {tmp_path}\nnode_id: n1\nretention:\n  published_days: 30\n")
    swept = subprocess.run([*telemetry_cli, "retention", "sweep", "--config", str(config)],
                           capture_output=True, text=True, timeout=120)
    assert swept.returncode == 0, swept.stderr
    assert not any(path.exists() for path in old_files) and manifests[0].exists()

    done = subprocess.run([*telemetry_cli, "reconcile", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"({len(old_files)} expired by retention)" in done.stdout

    engine = processor_engine(tmp_path)
    young = json.loads(manifests[1].read_text())["files"][0]["key"]
    (archive / young).unlink()  # a young manifest's file: really missing
    result = reconcile(engine.publisher(), [uuid(i) for i in range(4)], expire_after_days=30)
    assert result.expired_files == len(old_files) and result.missing_ids == []
    assert result.problems == [f"{manifests[1].relative_to(archive).as_posix()}: published file {young} is missing"]
    without_retention = reconcile(engine.publisher(), expire_after_days=None)
    assert without_retention.expired_files == 0 and len(without_retention.problems) == len(old_files) + 1


def test_keeps_processed_spool_when_configured(tmp_path):
    source = write_spool(tmp_path, fixture_records(1))
    Processor(processor_engine(tmp_path, overrides=["retention.spool_processed_days=3"])).run_once()
    assert (tmp_path / "spool" / "processed" / source.name).exists()


def test_orphaned_open_spool_files_are_drained(tmp_path):
    """An edge killed mid-file leaves its spool file in open/; the processor finishes and drains it."""
    code = ("import os, sys; sys.path.insert(0, 'tests'); from pathlib import Path;"
            "from process_helpers import fixture_records; from telemetry_core.store.spool.files import SpoolWriter;"
            f"w = SpoolWriter(Path({str(tmp_path)!r}) / 'spool', 'n1');"
            "[w.append(p, b, timestamp_ms=1378822911255) for p, b in fixture_records(2)]; os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert list((tmp_path / "spool" / "open").iterdir())
    summary = Processor(processor_engine(tmp_path)).run_once()
    assert summary.records_valid == 2


def test_process_once_command(tmp_path, telemetry_cli):
    config = tmp_path / "c.yaml"
    config.write_text(f"data_dir: {tmp_path}\nnode_id: n1\n")
    write_spool(tmp_path, fixture_records(2) + [("bad", b"x")])
    result = subprocess.run([*telemetry_cli, "process", "--once", "--config", str(config)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "2 valid records, 1 invalid" in result.stderr
    check = subprocess.run([*telemetry_cli, "reconcile", "--config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.startswith("ok: 1 manifests, 2 files, 3 records")


def test_exact_resubmissions_leave_the_main_store_and_decisions_are_published(tmp_path):
    records = fixture_records(2) + fixture_records(1)  # the third is uuid(0) again, same bytes
    writer_path = write_spool(tmp_path, records[:2])
    write_spool(tmp_path, records[2:], timestamp_ms=1378822999999)
    processor = Processor(processor_engine(tmp_path))
    summary = processor.run_once()
    processor.close()
    assert (summary.records_valid, summary.records_invalid) == (2, 1)
    assert "_invalid/duplicate/20130910.n1.2.log.xz" in archive_files(tmp_path)
    assert [r for r, _ in read_archive(tmp_path, KEY)] == [uuid(0), uuid(1)]
    ledgers = [key for key in archive_files(tmp_path) if key.startswith("_ledger/")]
    assert ledgers and not list((tmp_path / "ledger").glob("*.ledger"))
    assert writer_path.name not in " ".join(archive_files(tmp_path))
    assert snapshot()["processor"]["dedup"]["kept"] == 2


def test_reprocessing_after_a_crash_replays_dedup_decisions(tmp_path, monkeypatch):
    write_spool(tmp_path, fixture_records(3))

    def crash(*args, **kwargs):
        raise SystemExit("killed")

    monkeypatch.setattr(Processor, "_compress", crash)
    with pytest.raises(SystemExit):
        Processor(processor_engine(tmp_path)).run_once()
    monkeypatch.undo()
    # the crash came after the decisions were durable; replaying them must not turn records into duplicates
    state = json.loads(next((tmp_path / "work").glob("*.d/state.json")).read_text())
    state["phase"] = "claimed"
    (next((tmp_path / "work").glob("*.d")) / "state.json").write_text(json.dumps(state))
    summary = Processor(processor_engine(tmp_path)).run_once()
    assert (summary.records_valid, summary.records_invalid) == (3, 0)
