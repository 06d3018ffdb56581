"""The convert stage as the pipeline uses it: built-in plugin, pdf.js plugin, CLI commands."""

from __future__ import annotations

import gzip
import json
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from telemetry_core.convert.commands import numbered_lines
from telemetry_core.convert.stage import EXACT_URLS, SpecSource
from telemetry_core.engine import Engine
from telemetry_core.errors import RecordError
from telemetry_core.metrics.stats import snapshot
from telemetry_core.store.process.decoder import convert, serialize, stored_json
from telemetry_core.records import Record
from telemetry_core.store.spool.files import SpoolReader

FIXTURES = Path(__file__).parent / "fixtures"
REVISION = "http://hg.mozilla.org/releases/mozilla-release/rev/a55c55edf302"
PING = next(iter(SpoolReader(FIXTURES / "payload_v1_packed_log__telemetry1.log")))
EXPECTED = json.loads((FIXTURES / "expected_v2__telemetry1_converted_by_original_convert_py.json").read_text())


@pytest.fixture
def engine(tmp_path):
    """Every installed plugin (the pdf.js distribution included), offline."""
    return Engine.from_config(None, [f"data_dir={tmp_path}", "convert.histograms.server=null",
                                     f"convert.histograms.cache_dir={tmp_path / 'cache'}"], configure_logs=False)


def record_of(payload) -> Record:
    return Record(id="r", path="", raw=b"", received_at_ms=0, payload=payload)


def test_fixture_ping_converts_offline_from_the_seeded_cache(engine):
    record = record_of(json.loads(gzip.decompress(PING.body)))
    convert(engine, record)
    histograms = record.payload["histograms"]
    assert record.payload["ver"] == 2
    differing = {name for name in EXPECTED["histograms"] if histograms.get(name) != EXPECTED["histograms"][name]}
    assert differing == {"GC_REASON_2"}  # one bucket shorter than the original, see docs/convert.md
    assert len(histograms["GC_REASON_2"]) == len(EXPECTED["histograms"]["GC_REASON_2"]) - 1


def test_unknown_revision_offline_is_operational_not_a_bad_record(engine):
    from telemetry_core.convert.revisions import HgwebError

    payload = json.loads(gzip.decompress(PING.body))
    payload["info"]["revision"] = "http://hg.mozilla.org/mozilla-central/rev/0123456789ab"
    with pytest.raises(HgwebError):
        convert(engine, record_of(payload))


def test_a_revision_url_that_resolved_to_its_changeset_is_not_resolved_again(engine):
    source = SpecSource(engine.config.get("convert.histograms"))
    calls = []
    resolve = source.resolver.resolve
    source.resolver.resolve = lambda revision, info: calls.append(revision) or resolve(revision, info)
    spec = source.spec(REVISION, {})
    assert source.spec(REVISION, {}) is spec and calls == [REVISION]  # the second lookup: no parse, no resolve
    same_changeset = REVISION.replace("http://", "https://")
    assert source.spec(same_changeset, {}) is spec and calls == [REVISION, same_changeset]
    for _ in range(2):  # a refused URL is refused every time, never remembered
        with pytest.raises(RecordError) as refused:
            source.spec("https://example.com/releases/mozilla-release/rev/a55c55edf302", {})
        assert refused.value.category == "unknown_revision"
    source.resolver.resolve = lambda revision, info: resolve(REVISION, info)  # every changeset: the seeded one
    for n in range(EXACT_URLS + 10):  # remembered URLs are bounded
        assert source.spec(f"http://hg.mozilla.org/releases/mozilla-release/rev/{n:012x}", {}) is spec
    assert len(source.exact) == EXACT_URLS


def test_missing_revision_is_a_record_error(engine):
    payload = json.loads(gzip.decompress(PING.body))
    payload["info"]["revision"] = "/rev/"
    with pytest.raises(RecordError) as caught:
        convert(engine, record_of(payload))
    assert caught.value.category == "missing_revision_repo"


def pdfjs_entries(size_kb_buckets=20, size_kb_values=None):
    return {
        "PDF_VIEWER_USED": {"range": [1, 2], "bucket_count": 3, "histogram_type": 2,
                            "values": {"0": 0, "1": 1, "2": 0}, "sum": 1, "sum_squares_lo": 1, "sum_squares_hi": 0},
        "PDF_VIEWER_DOCUMENT_SIZE_KB": {"range": [2, 65536], "bucket_count": size_kb_buckets, "histogram_type": 0,
                                        "values": size_kb_values or {"117": 0, "208": 1, "370": 0}, "sum": 250,
                                        "log_sum": 5.52, "log_sum_squares": 30.5},
        "PDF_VIEWER_NEW_PROBE": {"range": [1, 5], "bucket_count": 6, "histogram_type": 1,
                                 "values": {"0": 0, "1": 2, "2": 0}, "sum": 2, "sum_squares_lo": 2,
                                 "sum_squares_hi": 0},
    }


def test_pdfjs_plugin_is_installed_and_loaded_through_its_entry_point(engine):
    assert metadata.distribution("telemetry-pdfjs").version == "1.0.0"
    info = {p.name: p for p in engine.plugins}["pdfjs"]
    assert (info.source, info.distribution, info.hooks) == (
        "entrypoint", "telemetry-pdfjs", ["telemetry_convert_addon_histograms"])


def test_pdfjs_histograms_convert_and_are_checked(engine):
    payload = {"ver": 1, "info": {"revision": REVISION}, "histograms": {},
               "addonHistograms": {"uriloader@pdf.js": pdfjs_entries()}}
    record = record_of(payload)
    convert(engine, record)
    converted = record.payload["addonHistograms"]["uriloader@pdf.js"]
    assert converted["PDF_VIEWER_USED"] == [0, 1, 0, 1, -1, -1, 1, 0]
    size = converted["PDF_VIEWER_DOCUMENT_SIZE_KB"]
    assert len(size) == 25 and size[9] == 1 and size[20:] == [250, 5.52, 30.5, -1, -1]
    assert converted["PDF_VIEWER_NEW_PROBE"][:6] == [0, 2, 0, 0, 0, 0]  # unknown names convert generically
    assert record.warnings == ["addon_definition_unknown"]


def test_pdfjs_mismatch_is_a_counted_warning_not_a_change(engine):
    payload = {"ver": 1, "info": {"revision": REVISION}, "histograms": {},
               "addonHistograms": {"uriloader@pdf.js": pdfjs_entries(size_kb_buckets=21,
                                                                     size_kb_values={"2": 1, "3": 0})}}
    record = record_of(payload)
    convert(engine, record)
    assert sorted(record.warnings) == ["addon_definition_mismatch", "addon_definition_unknown"]
    assert len(record.payload["addonHistograms"]["uriloader@pdf.js"]["PDF_VIEWER_DOCUMENT_SIZE_KB"]) == 26
    assert snapshot()["convert"]["warning_names"]["addon_definition_mismatch"] == 1


def test_other_addons_convert_without_checks(engine):
    payload = {"ver": 1, "info": {}, "histograms": {},
               "addonHistograms": {"other@example.org": {"X": pdfjs_entries()["PDF_VIEWER_USED"]}}}
    record = record_of(payload)
    convert(engine, record)
    assert record.warnings == [] and record.payload["addonHistograms"]["other@example.org"]["X"][:3] == [0, 1, 0]


def run(telemetry_cli, *args, stdin=None):
    return subprocess.run([*telemetry_cli, *args], capture_output=True, input=stdin, timeout=120)


def test_convert_command_reads_spool_files(telemetry_cli, tmp_path):
    result = run(telemetry_cli, "convert", "--set", f"data_dir={tmp_path}",
                 str(FIXTURES / "payload_v1_packed_log__telemetry1.log"))
    assert result.returncode == 0, result.stderr
    record_id, document = result.stdout.split(b"\t", 1)
    assert record_id == b"17caa68c-25f5-450a-9cce-7d31318846d8"
    assert json.loads(document)["ver"] == 2
    assert result.stderr.decode().strip().endswith("converted 1 records")


def test_convert_command_reads_lines_from_stdin_and_reports_failures(telemetry_cli, tmp_path):
    good = json.dumps({"ver": 1, "info": {"revision": REVISION}, "histograms": {}})
    lines = f"a\t{good}\nb\t{{broken\nc\t[1]\nno tab here\nd\t{json.dumps({'ver': 2})}\n".encode()
    result = run(telemetry_cli, "convert", "--set", f"data_dir={tmp_path}", stdin=lines)
    assert result.returncode == 1
    assert result.stdout.startswith(b"a\t{")
    assert len(result.stdout.splitlines()) == 1
    assert "failed: 2 bad_payload, 2 corrupted_data" in result.stderr.decode()


def test_histograms_show(telemetry_cli, tmp_path):
    listing = run(telemetry_cli, "histograms", "show", "--set", f"data_dir={tmp_path}", REVISION)
    assert b"CYCLE_COLLECTOR\texponential\t1\t10000\t50" in listing.stdout
    bounds = run(telemetry_cli, "histograms", "show", "--set", f"data_dir={tmp_path}", REVISION, "CYCLE_COLLECTOR")
    assert bounds.stdout.split()[:5] == [b"0", b"1", b"2", b"3", b"4"]
    missing = run(telemetry_cli, "histograms", "show", "--set", f"data_dir={tmp_path}", REVISION, "NOPE")
    assert missing.returncode == 1 and b"NOPE is not defined" in missing.stderr


@pytest.mark.parametrize("data", [b"", b"\n", b"a", b"a\n", b"a\nb", b"a\n\nb\n", b"\n\na\t{}\n \n",
                                  b"a\r\nb\rc\n", b"a\rb", b"a\n\r\n"])
def test_convert_command_numbers_lines_as_splitlines_does(data):
    assert list(numbered_lines(data)) == list(enumerate(data.splitlines(), start=1))


def nested(depth):
    payload = {}
    for _ in range(depth):
        payload = {"x": payload}
    return payload


@pytest.mark.parametrize("payload, category", [({"x": {1, 2}}, "bad_payload"), ({"x": "\ud800"}, "bad_payload"),
                                               (nested(300), "too_deep")])
def test_convert_command_refuses_what_cannot_be_stored_as_serialize_does(payload, category):
    with pytest.raises(RecordError) as mine:
        stored_json(record_of(payload))
    with pytest.raises(RecordError) as theirs:
        serialize(record_of(payload))
    assert (mine.value.category, str(mine.value)) == (theirs.value.category, str(theirs.value)) == \
        (category, str(theirs.value))
