"""The local retention sweep deletes exactly what is old in each area, and never unprocessed input."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from telemetry_core.config.loader import read_config, validate
from telemetry_core.ops.retention import retention_areas, sweep

DAY = 86400
NOW = time.time()


def make_file(root: Path, relative: str, age_days: float, data: bytes = b"data") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    stamp = NOW - age_days * DAY
    os.utime(path, (stamp, stamp))
    return path


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


#: (path under data_dir, age in days): everything a data_dir can hold, old and new.
LAYOUT = {
    "spool/open/n1.42.spool": 400,
    "spool/finished/n1.41.spool": 400,
    "spool/processed/n1.30.spool": 10,
    "spool/processed/n1.39.spool": 1,
    "work/n1.40/out/x.log.xz": 400,
    "state/processor.lock": 400,
    "metrics/process.json": 400,
    "ledger/dedup.sqlite": 400,
    "failed/n1.12.spool": 40,
    "failed/n1.12.spool.reason": 40,
    "failed/n1.38.spool": 2,
    "failed/n1.38.spool.reason": 2,
    "failed/n1.5.spool.reason": 60,  # orphaned reason file
    "archive/saved-session/Firefox/release/23.0/20130101.20130102.n1.1.log.xz": 500,
    "archive/saved-session/Firefox/release/23.0/20130101.20130615.n1.9.log.xz": 3,
    "archive/_invalid/corrupted_data/20130102.n1.1.log.xz": 45,
    "archive/_invalid/corrupted_data/20130615.n1.9.log.xz": 3,
    "archive/_manifests/n1/1.json": 500,
    "archive/_ledger/state.json": 500,
    "archive/saved-session/Firefox/release/23.0/.publish-tmp123": 500,  # a publish in progress
    "archive/_replays/n1/n1.7.1.1.spool.json": 500,
    "pending/mozilla-release.a55c55edf302/n1.44.spool": 400,  # parked records: never, by default
    "pending/mozilla-release.a55c55edf302/revision.json": 400,
}
NEVER_SWEPT = {"spool/open/n1.42.spool", "spool/finished/n1.41.spool", "work/n1.40/out/x.log.xz",
               "state/processor.lock", "metrics/process.json", "ledger/dedup.sqlite",
               "archive/_manifests/n1/1.json", "archive/_ledger/state.json",
               "archive/saved-session/Firefox/release/23.0/.publish-tmp123",
               "archive/_replays/n1/n1.7.1.1.spool.json", "pending/mozilla-release.a55c55edf302/n1.44.spool",
               "pending/mozilla-release.a55c55edf302/revision.json"}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for relative, age in LAYOUT.items():
        make_file(root, relative, age, data=relative.encode())
    return root


def config_for(data_dir: Path, *overrides: str):
    return validate(read_config(None, [f"data_dir={data_dir}", "retention.spool_processed_days=7",
                              "retention.failed_days=30", "retention.invalid_days=30", *overrides]))


def test_local_backend_deletes_what_is_old_in_each_area_and_nothing_else(data_dir):
    before = tree(data_dir)
    report = sweep(retention_areas(config_for(data_dir)), now=NOW)

    deleted = before - tree(data_dir)
    assert deleted == {"spool/processed/n1.30.spool", "failed/n1.12.spool", "failed/n1.12.spool.reason",
                       "failed/n1.5.spool.reason", "archive/_invalid/corrupted_data/20130102.n1.1.log.xz"}
    assert NEVER_SWEPT <= tree(data_dir)
    # published_days is null by default: the local archive is kept forever
    assert "archive/saved-session/Firefox/release/23.0/20130101.20130102.n1.1.log.xz" in tree(data_dir)
    assert report.files == 5
    assert report.bytes == sum(len(path.encode()) for path in deleted)
    assert report.areas["failed"].files == 3 and report.areas["spool_processed"].kept == 1


def test_published_days_expires_the_local_archive(data_dir):
    sweep(retention_areas(config_for(data_dir, "retention.published_days=365")), now=NOW)
    archive = {p for p in tree(data_dir) if p.startswith("archive/saved-session")}
    assert archive == {"archive/saved-session/Firefox/release/23.0/20130101.20130615.n1.9.log.xz",
                       "archive/saved-session/Firefox/release/23.0/.publish-tmp123"}
    assert NEVER_SWEPT <= tree(data_dir)


def test_s3_backend_keeps_local_copies_keep_local_days(data_dir):
    config = config_for(data_dir, "store.publish.backend=s3", "store.publish.bucket=tbucket",
                        "store.publish.keep_local_days=2.5")
    sweep(retention_areas(config), now=NOW)
    remaining = tree(data_dir)
    assert not any(p.startswith(("archive/saved-session/Firefox/release/23.0/2013", "archive/_invalid/"))
                   for p in remaining)
    assert NEVER_SWEPT <= remaining


def test_nulls_keep_everything(data_dir):
    before = tree(data_dir)
    config = config_for(data_dir, "retention.failed_days=null", "retention.invalid_days=null",
                        "retention.spool_processed_days=0")
    sweep(retention_areas(config), now=NOW)
    assert before - tree(data_dir) == {"spool/processed/n1.30.spool", "spool/processed/n1.39.spool"}


def test_dry_run_deletes_nothing_and_reports_the_same(data_dir):
    before = tree(data_dir)
    dry = sweep(retention_areas(config_for(data_dir)), now=NOW, dry_run=True)
    assert tree(data_dir) == before
    real = sweep(retention_areas(config_for(data_dir)), now=NOW)
    assert sorted(p for a in dry.areas.values() for p in a.paths) == \
        sorted(p for a in real.areas.values() for p in a.paths)
    assert dry.files == real.files == 5


def test_symlinks_are_neither_followed_nor_deleted(data_dir, tmp_path):
    outside = make_file(tmp_path, "precious/keep.me", 1000)
    (data_dir / "spool" / "processed" / "link.spool").symlink_to(outside)
    (data_dir / "failed" / "linked-dir").symlink_to(outside.parent, target_is_directory=True)
    sweep(retention_areas(config_for(data_dir)), now=NOW)
    assert outside.exists()
    assert (data_dir / "spool" / "processed" / "link.spool").is_symlink()


def test_missing_areas_are_fine(tmp_path):
    report = sweep(retention_areas(config_for(tmp_path / "empty")), now=NOW)
    assert report.files == 0 and report.errors == 0


def test_the_command_sweeps_and_reports(data_dir, tmp_path):
    config = tmp_path / "plugins.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(data_dir), "node_id": "n1",
                                      "retention": {"spool_processed_days": 7, "failed_days": 30}}))
    telemetry = str(Path(sys.executable).parent / "telemetry")
    before = tree(data_dir)

    dry = subprocess.run([telemetry, "retention", "sweep", "--config", str(config), "--dry-run", "-v"],
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert tree(data_dir) - {"metrics/retention.json"} == before  # the command's metrics snapshot
    assert "spool_processed: would delete 1 files" in dry.stdout
    assert str(data_dir / "failed" / "n1.12.spool.reason") in dry.stdout

    real = subprocess.run([telemetry, "retention", "sweep", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert real.returncode == 0, real.stderr
    assert "total: deleted 5 files" in real.stdout
    assert NEVER_SWEPT <= tree(data_dir)


def spool_of(root: Path, relative: str, records: int, age_days: float) -> Path:
    """A real spool file of ``records`` records at ``root/relative``, ``age_days`` old."""
    from telemetry_core.store.spool.files import SpoolWriter

    with SpoolWriter(root / "scratch", "n1") as writer:
        for index in range(records):
            writer.append(f"{index:08x}-0000-4000-8000-000000000000", b"{}", timestamp_ms=1378822911255)
    (finished,) = (root / "scratch" / "finished").iterdir()
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    finished.rename(target)
    stamp = NOW - age_days * DAY
    os.utime(target, (stamp, stamp))
    return target


def test_expiring_failed_inputs_warns_with_the_records_lost(tmp_path, caplog):
    from telemetry_core.metrics.stats import snapshot

    failed = spool_of(tmp_path, "failed/n1.1.2.3.spool", 3, age_days=40)
    make_file(tmp_path, "failed/n1.1.2.3.spool.reason", 40)
    dry = sweep(retention_areas(config_for(tmp_path)), now=NOW, dry_run=True)
    assert dry.areas["failed"].files == 2 and failed.exists()
    assert "3 acknowledged records never published would be lost" in caplog.text
    caplog.clear()

    sweep(retention_areas(config_for(tmp_path)), now=NOW)
    assert not failed.exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"retention deleted {failed} from failed/ after 40.0 days: 3 acknowledged records "
                        "that were never published are lost"]
    assert snapshot()["retention"]["expired_records"] == {"failed": 3}


def test_pending_is_swept_only_with_pending_days(tmp_path, caplog):
    from telemetry_core.metrics.stats import snapshot

    parked = spool_of(tmp_path, "pending/mozilla-release.abc/n1.1.2.3.spool", 2, age_days=100)
    revision = make_file(tmp_path, "pending/mozilla-release.abc/revision.json", 100)
    report = sweep(retention_areas(config_for(tmp_path)), now=NOW)
    assert parked.exists() and report.areas["pending"].files == 0

    sweep(retention_areas(config_for(tmp_path, "retention.pending_days=90")), now=NOW)
    assert not parked.exists() and revision.exists()
    assert f"retention deleted {parked} from pending/ after 100.0 days: 2 acknowledged records" in caplog.text
    assert snapshot()["retention"]["expired_records"] == {"pending": 2}
