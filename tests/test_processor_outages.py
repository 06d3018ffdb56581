"""Outages hold back only what they must (issue #13).

* A full disk (a real 24 MiB tmpfs, filled for real) pauses the processor:
  no attempt is counted, nothing moves to ``failed/``, the loop never
  stops, and processing resumes on its own when space returns.
* An unreachable, slow or HTML-answering Histograms.json server parks only
  the records that need a revision the cache does not hold; the rest of the
  file is published at once, and the parked records are published when the
  server is back.
"""

from __future__ import annotations

import copy
import errno
import gzip
import json
import logging
import lzma
import os
import threading
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from telemetry_core.cli import cli
from telemetry_core.store.process.holdings import local_holdings
from telemetry_core.store.process.manifests import reconcile
from telemetry_core.store.process.processor import Processor, disk_full_error
from telemetry_core.store.local import LocalArchive
from hg_stub import HgStub
from process_helpers import DIMS_PATH, FIXTURE_PING, fixture_records, processor_engine, uuid, write_spool

FIXTURES = Path(__file__).parent / "fixtures"
AURORA_23 = (FIXTURES / "histograms_json__FIREFOX_AURORA_23_BASE__as_a55c55edf302.json").read_bytes()
PAYLOAD = orjson.loads(gzip.decompress(FIXTURE_PING.body))


def published_ids(archive: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in archive.rglob("*.xz"):
        if path.relative_to(archive).parts[0].startswith("_"):
            continue
        for line in lzma.decompress(path.read_bytes()).splitlines():
            record_id = line.split(b"\t", 1)[0].decode()
            counts[record_id] = counts.get(record_id, 0) + 1
    return counts


def quarantined(archive: Path) -> dict[str, str]:
    found = {}
    for path in (archive / "_invalid").rglob("*.xz") if (archive / "_invalid").exists() else ():
        for line in lzma.decompress(path.read_bytes()).splitlines():
            found[line.split(b"\t", 1)[0].decode()] = path.relative_to(archive / "_invalid").parts[0]
    return found


# --------------------------------------------------------------------------- a full disk


def fill(directory: Path, leave: int) -> Path:
    """Write a filler file until only about ``leave`` bytes are free."""
    filler = directory / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb") as handle:
        while True:
            usage = os.statvfs(directory)
            free = usage.f_bavail * usage.f_frsize
            if free <= leave:
                break
            try:
                handle.write(chunk[:max(4096, min(len(chunk), free - leave))])
                handle.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return filler


def disk_engine(disk: Path, tmp_path: Path, *extra: str):
    return processor_engine(disk / "data", overrides=[
        f"convert.histograms.cache_dir={tmp_path / 'cache'}", "convert.histograms.server=null",
        "process.disk_retry_s=0.05", "process.max_attempts=1", *extra])


def test_a_full_disk_pauses_processing_and_it_resumes_when_space_returns(small_disk, tmp_path, caplog):
    data = small_disk / "data"
    sources = [write_spool(data, fixture_records(25, start=25 * n)) for n in range(3)]
    ids = {uuid(i) for i in range(75)}
    acknowledged = {path.name: path.read_bytes() for path in sources}
    filler = fill(small_disk, leave=512 * 1024)  # room for a little, not for a file's work
    processor = Processor(disk_engine(small_disk, tmp_path, "process.min_free_disk_bytes=0"))
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            processor.run_forever(stop, poll_interval=0.02)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    caplog.set_level(logging.INFO, logger="telemetry_core")
    thread = threading.Thread(target=loop)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while processor.stats.disk_pauses == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # let it try again and again while the disk stays full
        assert processor.disk_paused is not None and thread.is_alive() and not errors
        assert not list((data / "failed").iterdir())
        for state in (data / "work").glob("*.d/state.json"):
            document = json.loads(state.read_text())
            assert document["attempts"] == 0 and document["phase"] == "claimed"
        # every acknowledged byte is still there, as it was
        kept = {p.name: p.read_bytes() for p in [*(data / "work").glob("*.spool"),
                                                  *(data / "spool" / "finished").glob("*.spool")]}
        assert kept == acknowledged
        paused_lines = [r for r in caplog.records if "processing paused" in r.getMessage()]
        assert len(paused_lines) == 1  # logged once per state change, not once per try

        filler.unlink()
        deadline = time.monotonic() + 60
        while published_ids(data / "archive").keys() != ids and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors
    assert published_ids(data / "archive") == {record_id: 1 for record_id in ids}
    assert processor.disk_paused is None
    assert any("processing resumed" in r.getMessage() for r in caplog.records)
    assert not list((data / "failed").iterdir()) and not list((data / "work").iterdir())
    result = reconcile(LocalArchive(data / "archive"), ids)
    assert result.ok, result.problems
    # no torn files: every published file decompresses whole
    for path in (data / "archive").rglob("*.xz"):
        lzma.decompress(path.read_bytes())


def test_the_free_space_floor_pauses_before_anything_is_claimed(small_disk, tmp_path):
    data = small_disk / "data"
    source = write_spool(data, fixture_records(3))
    processor = Processor(disk_engine(small_disk, tmp_path, f"process.min_free_disk_bytes={64 << 20}"))
    summary = processor.run_once()
    assert summary.disk_paused and summary.files == 0 and summary.retry_later == [source.name]
    assert source.exists() and processor.stats.disk_pauses == 1
    processor.min_free_disk_bytes = 1 << 20
    time.sleep(0.1)
    assert processor.run_once().files == 1
    assert published_ids(data / "archive") == {uuid(i): 1 for i in range(3)}


def test_disk_full_errors_are_found_in_an_exception_chain():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("publisher failed") from inner
    except RuntimeError as outer:
        assert disk_full_error(outer).errno == errno.ENOSPC
    assert disk_full_error(OSError(errno.EROFS, "read-only")) is not None
    assert disk_full_error(OSError(errno.EIO, "I/O error")) is None
    assert disk_full_error(ValueError("x")) is None


# --------------------------------------------------------------------------- the Histograms.json server

SEEDED = "http://hg.mozilla.org/releases/mozilla-release/rev/a55c55edf302"  # shipped in the seed cache
BETA = "http://hg.mozilla.org/releases/mozilla-beta/rev/0123456789ab"
CENTRAL = "https://hg.mozilla.org/mozilla-central/rev/fedcba987654"


def ping(revision: str) -> bytes:
    document = copy.deepcopy(PAYLOAD)
    document["info"]["revision"] = revision
    return gzip.compress(orjson.dumps(document))


@pytest.fixture
def hg():
    stub = HgStub()
    stub.serve("releases/mozilla-beta", "0123456789ab", AURORA_23)
    stub.serve("mozilla-central", "fedcba987654", AURORA_23)
    yield stub
    stub.stop()


def server_engine(tmp_path: Path, hg: HgStub, *extra: str):
    return processor_engine(tmp_path / "data", overrides=[
        f"convert.histograms.server={hg.url}", f"convert.histograms.cache_dir={tmp_path / 'cache'}",
        "convert.histograms.retries=0", "convert.histograms.connect_timeout=0.5",
        "convert.histograms.read_timeout=0.5", "process.pending_retry_s=0", *extra])


def process_until_published(processor: Processor, archive: Path, ids: dict[str, str]) -> None:
    """Run the processor until every id is published (30 s at most); each must be there once."""
    deadline = time.monotonic() + 30
    while published_ids(archive).keys() != ids.keys() and time.monotonic() < deadline:
        processor.run_once()
        time.sleep(0.05)
    assert published_ids(archive) == {record_id: 1 for record_id in ids}


def mixed_file(data: Path) -> tuple[Path, dict[str, str]]:
    revisions = {}
    records = []
    for n in range(12):
        revision = (SEEDED, BETA, CENTRAL)[n % 3]
        revisions[uuid(n)] = revision
        records.append((f"{uuid(n)}/{DIMS_PATH}", ping(revision)))
    return write_spool(data, records), revisions


@pytest.mark.parametrize("fault", ["down", "slow", "html", "500"])
def test_records_needing_an_unreachable_revision_are_parked_and_published_later(tmp_path, hg, fault):
    data = tmp_path / "data"
    source, revisions = mixed_file(data)
    if fault != "down":
        hg.mode = {"slow": "slow", "html": "html", "500": "500"}[fault]
        hg.start()
    processor = Processor(server_engine(tmp_path, hg))

    summary = processor.run_once()
    assert summary.files == 1 and summary.failed_files == [] and summary.records_parked == 8
    seeded = {record_id for record_id, revision in revisions.items() if revision == SEEDED}
    assert published_ids(data / "archive") == {record_id: 1 for record_id in seeded}  # at once
    assert not source.exists() and not list((data / "work").iterdir())
    parked = sorted((data / "pending").rglob("*.spool"))
    assert len(parked) == 2  # one file per revision
    (manifest_path,) = (data / "archive" / "_manifests").rglob("*.json")
    manifest = json.loads(manifest_path.read_text())
    assert sorted(entry[1] for entry in manifest["parked"]) == sorted(set(revisions) - seeded)
    assert manifest["records_read"] == 12
    # reconcile accounts for every acknowledged id: published or parked
    result = reconcile(processor.publisher, revisions, held=local_holdings(processor.engine))
    assert result.ok and result.parked == 8, (result.problems, result.missing_ids)

    # While the server stays broken, the parked records wait (and nothing fails).
    processor.run_once()
    assert len(sorted((data / "pending").rglob("*.spool"))) == 2
    assert not list((data / "failed").iterdir())

    hg.stop()
    hg.mode = "ok"
    hg.start()
    process_until_published(processor, data / "archive", revisions)
    assert not list((data / "pending").rglob("*.spool"))
    assert processor.stats.parked_released_files == 2
    result = reconcile(processor.publisher, revisions, held=local_holdings(processor.engine))
    assert result.ok and result.parked == 0 and result.parked_landed == 8, result.problems


def test_parked_records_wait_for_their_schedule(tmp_path, hg):
    data = tmp_path / "data"
    mixed_file(data)
    processor = Processor(server_engine(tmp_path, hg, "process.pending_retry_s=3600"))
    processor.run_once()
    hg.start()
    processor.run_once()  # the first retry is an hour away: nothing asked yet
    assert hg.requests == [] and len(list((data / "pending").rglob("*.spool"))) == 2
    processor.pending.release_due(processor._revision_available, force=True)
    processor.run_once()
    assert len(published_ids(data / "archive")) == 12


def test_a_revision_the_server_does_not_have_is_quarantined_not_parked(tmp_path, hg):
    data = tmp_path / "data"
    missing = "http://hg.mozilla.org/releases/mozilla-beta/rev/00000000beef"
    write_spool(data, [(f"{uuid(1)}/{DIMS_PATH}", ping(missing)), (f"{uuid(2)}/{DIMS_PATH}", ping(SEEDED))])
    hg.start()
    summary = Processor(server_engine(tmp_path, hg)).run_once()
    assert summary.records_parked == 0
    assert quarantined(data / "archive") == {uuid(1): "conversion_error"}
    assert published_ids(data / "archive") == {uuid(2): 1}
    assert not (data / "pending").exists() or not list((data / "pending").rglob("*.spool"))


def test_a_crash_after_parking_leaves_no_duplicate(tmp_path, hg):
    """A file that failed after some records were parked parks them again only once."""
    data = tmp_path / "data"
    source, revisions = mixed_file(data)
    engine = server_engine(tmp_path, hg)
    processor = Processor(engine)
    original = processor._compress

    def crash_once(*args, **kwargs):
        processor._compress = original
        raise OSError(errno.EIO, "simulated I/O error")

    processor._compress = crash_once
    processor.run_once(wait_for_retries=True)
    assert not source.exists()
    parked = list((data / "pending").rglob("*.spool"))
    assert len(parked) == 2
    hg.start()
    process_until_published(processor, data / "archive", revisions)


def test_replay_parked_sends_parked_records_now_and_reconcile_agrees(tmp_path, hg):
    data = tmp_path / "data"
    _, revisions = mixed_file(data)
    processor = Processor(server_engine(tmp_path, hg, "process.pending_retry_s=3600"))
    processor.run_once()
    config = tmp_path / "c.yaml"
    config.write_text(f"data_dir: {data}\nnode_id: n1\nconvert:\n  histograms:\n    server: {hg.url}\n"
                      f"    cache_dir: {tmp_path / 'cache'}\n")
    checked = CliRunner().invoke(cli, ["reconcile", "--config", str(config)])
    assert checked.exit_code == 0, checked.output
    assert "parked" in checked.output
    dry = CliRunner().invoke(cli, ["replay", "--parked", "--dry-run", "--config", str(config)])
    assert dry.exit_code == 0 and "would release 2 parked file(s) of 2 revision(s)" in dry.output
    assert len(list((data / "pending").rglob("*.spool"))) == 2
    hg.start()
    done = CliRunner().invoke(cli, ["replay", "--parked", "--config", str(config)])
    assert done.exit_code == 0 and "released 2 parked file(s)" in done.output, done.output
    processor.run_once()
    assert published_ids(data / "archive") == {record_id: 1 for record_id in revisions}
    checked = CliRunner().invoke(cli, ["reconcile", "--config", str(config)])
    assert checked.exit_code == 0, checked.output
