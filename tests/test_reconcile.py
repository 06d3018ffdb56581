"""telemetry reconcile tells the truth about records that are not simply published:
failed/ inputs, parked records, quarantined and replayed ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner

from process_helpers import fixture_records, processor_engine, uuid, write_spool
from telemetry_core.cli import cli
from telemetry_core.store.process.holdings import local_holdings
from telemetry_core.store.process.manifests import Manifest, manifest_key, reconcile
from telemetry_core.store.process.processor import Processor
from telemetry_core.store.local import sha256_of
from telemetry_core.store.process.replay import replay
from telemetry_core.store.spool.files import SpoolFileName

TOO_SMALL = "process.max_inflated_bytes=1024"


def process(data_dir: Path, *overrides: str) -> None:
    processor = Processor(processor_engine(data_dir, overrides=list(overrides)))
    processor.run_once()
    processor.close()


def run_reconcile(data_dir: Path, ids: list[str] | None = None):
    config = data_dir / "c.yaml"
    config.write_text(f"data_dir: {data_dir}\nnode_id: n1\n")
    args = ["reconcile", "--config", str(config)]
    if ids is not None:
        (data_dir / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
        args += ["--ids", str(data_dir / "ids.txt")]
    return CliRunner().invoke(cli, args)


def park(data_dir: Path, record_ids: list[int], seq: int = 50) -> Path:
    """What the processor does for records whose revision cannot be fetched: their framing into
    pending/<revision key>/<file>.spool, and a manifest naming them in ``parked``."""
    source = write_spool(data_dir, fixture_records(len(record_ids), start=record_ids[0]))
    pending = data_dir / "pending" / "mozilla-release.a55c55edf302"
    pending.mkdir(parents=True)
    (pending / "revision.json").write_text("{}")
    target = pending / source.name
    os.rename(source, target)
    manifest = Manifest(node="n1", seq=seq, source=f"n1.1.{seq}.1.spool", records_read=len(record_ids),
                        parked=[[0, uuid(i), f"pending/{pending.name}/{target.name}"] for i in record_ids])
    document = data_dir / "parked-manifest.json"
    document.write_text(json.dumps(manifest.to_json()))
    processor_engine(data_dir).publisher().publish(str(document), manifest_key("n1", seq),
                                                   checksum=sha256_of(document))
    document.unlink()
    return target


def test_clean_archive_is_ok_and_prints_the_accounting(tmp_path):
    write_spool(tmp_path, fixture_records(2))
    process(tmp_path)
    done = run_reconcile(tmp_path, [uuid(0), uuid(1)])
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines() == [
        "ok: 1 manifests, 1 files, 2 records",
        "quarantined: 0 records",
        "replayed: 0 records out of quarantine (their copies landed), 0 waiting for the processor",
        "parked: 0 records waiting in pending/ for their Histograms.json revision (0 records in 0 files there), "
        "0 landed since",
        "failed: 0 files in failed/ holding 0 acknowledged records not published",
    ]


def test_a_file_in_failed_fails_with_its_record_count(tmp_path):
    write_spool(tmp_path, fixture_records(1))
    process(tmp_path)
    stuck = write_spool(tmp_path, fixture_records(2, start=5))
    (tmp_path / "failed").mkdir(exist_ok=True)
    os.rename(stuck, tmp_path / "failed" / stuck.name)
    (tmp_path / "failed" / f"{stuck.name}.reason").write_text(json.dumps({"last_error": "RuntimeError: bug"}))
    done = run_reconcile(tmp_path)
    assert done.exit_code == 1
    assert (f"problem: failed/{stuck.name}: 2 acknowledged records not published (RuntimeError: bug); "
            "move it to spool/finished/ to try again") in done.stdout
    assert "failed: 1 files in failed/ holding 2 acknowledged records not published" in done.stdout


def test_parked_records_are_accounted_for_while_in_pending(tmp_path):
    write_spool(tmp_path, fixture_records(1))
    process(tmp_path)
    park(tmp_path, [3, 4])
    done = run_reconcile(tmp_path, [uuid(0), uuid(3), uuid(4)])
    assert done.exit_code == 0, done.output
    assert ("parked: 2 records waiting in pending/ for their Histograms.json revision "
            "(2 records in 1 files there), 0 landed since") in done.stdout


def test_a_parked_record_that_vanished_fails(tmp_path):
    pending = park(tmp_path, [3])
    pending.unlink()
    done = run_reconcile(tmp_path)
    assert done.exit_code == 1
    assert (f"problem: _manifests/n1/50.json: parked record {uuid(3)} (offset 0) is neither in pending/ "
            f"(parked in pending/mozilla-release.a55c55edf302/{pending.name}) nor in a later manifest") in done.stdout


def test_a_parked_record_that_landed_later_is_accounted_for(tmp_path):
    pending = park(tmp_path, [3])
    name = SpoolFileName(started_ms=1, node_id="n1", pid=1, sequence=9)  # moved under a new name
    os.rename(pending, tmp_path / "spool" / "finished" / str(name))
    process(tmp_path)
    engine = processor_engine(tmp_path)
    result = reconcile(engine.publisher(), [uuid(3)], held=local_holdings(engine))
    assert result.ok, result.problems
    assert (result.parked, result.parked_landed) == (0, 1)


def test_replayed_originals_are_not_counted_twice(tmp_path):
    write_spool(tmp_path, fixture_records(2))
    process(tmp_path, TOO_SMALL)
    ids = [uuid(0), uuid(1)]
    engine = processor_engine(tmp_path)
    before = reconcile(engine.publisher(), ids, held=local_holdings(engine))
    assert before.ok and before.quarantined == {"oversized_data": 2}

    replay(engine)
    waiting = reconcile(engine.publisher(), ids, [p.name for p in (tmp_path / "spool" / "finished").iterdir()],
                        held=local_holdings(engine))
    assert waiting.replay_waiting == 2 and waiting.quarantined == {"oversized_data": 2}

    process(tmp_path)
    done = run_reconcile(tmp_path, ids)
    assert done.exit_code == 0, done.output
    assert "duplicated" not in done.stdout
    assert "quarantined: 0 records" in done.stdout
    assert "replayed: 2 records out of quarantine (their copies landed), 0 waiting for the processor" in done.stdout
