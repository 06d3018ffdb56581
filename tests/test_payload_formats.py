"""Conformance with telemetry-server's ``convert.py`` (HEAD a685e20) for every payload shape it
converted: the Fennec ANR report, Firefox OS 1.3, the unified saved-session ping of
``test/unicode.v1.packed`` and text that is not UTF-8 (issue #18).

The ANR and Firefox OS payloads are copied from the original's ``telemetry/test_convert.py``
(MPL-2.0, see fixtures/NOTICE.md); the unified ping is the fixture packed log itself.
"""

from __future__ import annotations

import copy
import gzip
import json
import lzma
from pathlib import Path
from typing import Any

import orjson
import pytest

from telemetry_core.errors import RecordError
from telemetry_core.metrics.stats import snapshot
from telemetry_core.records import Record
from telemetry_core.schema import Schema
from telemetry_core.convert.spec import HistogramSpec
from telemetry_core.reduce.histograms import HistogramLookup
from telemetry_core.store.process.decoder import convert, decode, serialize
from telemetry_core.store.process.processor import Processor
from telemetry_core.store.spool.files import SpoolReader
from process_helpers import DIMS_PATH, FIXTURE_PING, FIXTURES, processor_engine, uuid, write_spool

UNIFIED_LOG = FIXTURES / "payload_v4_unified_packed_log__unicode.v1.packed"
UNIFIED_ITEMS = list(SpoolReader(UNIFIED_LOG))
UNIFIED_REVISION = "https://hg.mozilla.org/mozilla-central/rev/eab4a81e4457"
SEEDED_2013_REVISION = "http://hg.mozilla.org/releases/mozilla-release/rev/a55c55edf302"
#: The original's final schema: it knows the reasons ``ftu`` and ``main`` and the appName ``FirefoxOS``.
HEAD_SCHEMA = FIXTURES / "schema__telemetry_schema__HEAD_2015-02.json"
#: Definitions of the unified ping's histograms, written for this test from the ping's own
#: self-description (range, bucket_count, histogram_type); the 2015 file is not available offline.
UNIFIED_DEFINITIONS = {
    "OSFILE_WRITEATOMIC_JANK_MS": {"kind": "exponential", "high": "5000", "n_buckets": 10,
                                   "description": "test stand-in"},
    "BLOCKED_ON_PLUGIN_MODULE_INIT_MS": {"kind": "exponential", "high": "10000", "n_buckets": 20, "keyed": True,
                                         "description": "test stand-in"},
    "SEARCH_DEFAULT_ENGINE": {"kind": "flag", "keyed": True, "description": "test stand-in"},
    "SEARCH_COUNTS": {"kind": "count", "keyed": True, "description": "test stand-in"},
}

ANR = {  # test_convert.py get_payload("anr")
    "androidLogcat": "...logcat...",
    "androidANR": "...snip...",
    "info": {
        "hardware": "tuna", "appUpdateChannel": "default", "appBuildID": "20130225174321", "appName": "Fennec",
        "appVersion": "22.0a1", "appID": "{aa3c5121-dab2-40e2-81ca-7ea25febc110}", "version": "17",
        "OS": "Android", "reason": "android-anr-report", "platformBuildID": "20130225174321", "locale": "en-US",
        "cpucount": 2, "memsize": 694, "arch": "armv7l", "kernel_version": "3.0.31-gd5a18e0",
        "device": "Galaxy Nexus", "manufacturer": "samsung",
    },
    "simpleMeasurements": {"uptime": 0},
    "ver": 1,
}

FXOS = {  # test_convert.py get_payload("fxos")
    "ver": 3,
    "activationTime": 1395769944966,
    "devicePixelRatio": 1,
    "deviceinfo.firmware_revision": "",
    "deviceinfo.hardware": "qcom",
    "deviceinfo.os": "1.5.0.0-prerelease",
    "deviceinfo.platform_build_id": "20140325104133",
    "deviceinfo.platform_version": "31.0a1",
    "deviceinfo.product_model": "ALCATEL ONE TOUCH FIRE",
    "deviceinfo.software": "Boot2Gecko 1.5.0.0-prerelease",
    "deviceinfo.update_channel": "default",
    "icc": {"mcc": "310", "mnc": "410", "spn": None},
    "locale": "en-US",
    "network": {"mcc": "310", "mnc": "410", "operator": "AT&T"},
    "pingID": "e426da9f-2a29-4e09-895b-c883903956cb",
    "pingTime": 1395852542588,
    "screenHeight": 480,
    "screenWidth": 320,
}


def unified_ping() -> dict[str, Any]:
    return json.loads(next(item for item in UNIFIED_ITEMS if not item.is_gzip).body)


def seed(cache_dir: Path, revision_path: str, definitions: dict[str, Any]) -> None:
    target = cache_dir / revision_path / "Histograms.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(definitions))


@pytest.fixture
def engine(tmp_path):
    """The built-ins, offline, with the unified ping's revision seeded in the cache."""
    seed(tmp_path / "cache", "mozilla-central/eab4a81e4457", UNIFIED_DEFINITIONS)
    return processor_engine(tmp_path, overrides=["convert.histograms.server=null", f"schema={HEAD_SCHEMA}",
                                                 f"convert.histograms.cache_dir={tmp_path / 'cache'}"])


def decoded(engine, body: bytes, path: str = f"{uuid(1)}/{DIMS_PATH}", client_addr: str | None = None) -> Record:
    record = decode(engine, path=path, body=body, timestamp_ms=1426005249245, client_addr=client_addr,
                    source="test:0", schema=engine.schema, max_inflated_bytes=4 * 1024 * 1024)
    convert(engine, record)
    serialize(record)
    return record


# ---------------------------------------------------------------- the Fennec ANR report


def test_anr_report_without_histograms_or_revision_converts(engine):
    record = decoded(engine, json.dumps(ANR).encode(), path=uuid(1))
    expected = copy.deepcopy(ANR)
    expected["ver"] = 2
    assert record.payload == expected  # nothing else changes; no geoCountry
    assert record.dims["reason"] == "android-anr-report" and record.dims["appName"] == "Fennec"
    assert record.warnings == []


def test_a_revision_without_histograms_is_still_refused(engine):
    payload = copy.deepcopy(ANR)
    payload["info"]["revision"] = SEEDED_2013_REVISION
    with pytest.raises(RecordError, match="has info.revision but no histograms") as caught:
        decoded(engine, json.dumps(payload).encode())
    assert caught.value.category == "bad_payload"


# ---------------------------------------------------------------- Firefox OS 1.3


def test_fxos_payload_gets_the_originals_info_and_dimensions(engine):
    record = decoded(engine, json.dumps(FXOS).encode(), path=uuid(1))
    payload = record.payload
    assert payload["ver"] == 2 and "pingID" not in payload
    assert payload["info"] == {"reason": "ftu", "appUpdateChannel": "default", "appBuildID": "20140325104133",
                               "appName": "FirefoxOS", "appVersion": "31.0a1"}
    assert {k: v for k, v in payload.items() if k not in ("ver", "info")} == \
        {k: v for k, v in FXOS.items() if k not in ("ver", "pingID")}
    schema_dims = dict(zip(engine.schema.names, engine.schema.apply(
        {**payload["info"], "submission_date": record.dims["submission_date"]})))
    assert record.dims == schema_dims
    assert (record.dims["reason"], record.dims["appName"], record.dims["appVersion"]) == ("ftu", "FirefoxOS", "31.0a1")
    assert "geoCountry" not in payload["info"]  # only the geoip plugin adds it


def test_fxos_fields_it_lacks_are_unknown(engine):
    payload = {"ver": 3, "pingID": "x"}
    record = decoded(engine, json.dumps(payload).encode())
    assert record.payload == {"ver": 2, "info": {"reason": "ftu", "appUpdateChannel": "UNKNOWN",
                                                 "appBuildID": "UNKNOWN", "appName": "FirefoxOS",
                                                 "appVersion": "UNKNOWN"}}


# ---------------------------------------------------------------- unified (version 4)


def expected_unified_info() -> dict[str, Any]:
    return {
        # from application (appFieldMap)
        "appName": "Firefox", "appUpdateChannel": "nightly", "appVersion": "39.0a1", "appBuildID": "20150309030224",
        "arch": "x86-64", "platformVersion": "39.0a1", "xpcomAbi": "x86_64-gcc3", "vendor": "Mozilla",
        "reason": "saved-session",
        # from payload.info (merged where info lacks them)
        "previousSubsessionId": None, "subsessionId": "e426d38f-3c8b-bf49-a62b-0d992a873cb2",
        "sessionId": "046ae588-8c28-fa4d-9ada-4ff3f1d7ea78", "previousBuildId": None, "timezoneOffset": -420,
        "asyncPluginInit": False, "revision": UNIFIED_REVISION, "flashVersion": "16.0.0.305",
        "addons": unified_ping()["payload"]["info"]["addons"], "subsessionLength": 57888,
        "subsessionStartDate": "2015-03-09T00:00:00", "sessionStartDate": "2015-03-09T00:00:00",
        "profileSubsessionCounter": 2, "subsessionCounter": 1,
        # from environment (envFieldMap)
        "appID": "{ec8030f7-c20a-464f-9b0e-13a3a9e97384}", "platformBuildID": "20150309030224", "cpucount": 4,
        "memsize": 16384, "locale": "en-US", "OS": "Darwin", "version": "14.1.0",
    }


@pytest.mark.parametrize("gzipped", [True, False], ids=["gzip", "raw"])
def test_unified_saved_session_from_the_packed_log_is_flattened_and_converted(engine, gzipped):
    item = next(item for item in UNIFIED_ITEMS if item.is_gzip == gzipped)
    record = decoded(engine, item.body, path=uuid(2))
    payload = record.payload
    original = unified_ping()
    assert payload["info"] == expected_unified_info()
    assert (payload["version"], payload["ver"], payload["payload.ver"]) == (5, 5, 4)
    assert payload["clientID"] == payload["clientId"] == "93fb0031-ccac-c84a-adae-1cc118ec86cb"
    assert "payload" not in payload and payload["environment"] == original["environment"]
    for field in ("threadHangStats", "chromeHangs", "simpleMeasurements", "childPayloads", "UIMeasurements",
                  "addonDetails", "lateWrites", "fileIOReports", "slowSQL"):
        assert payload[field] == original["payload"][field], field
    assert payload["addonHistograms"] == {}
    assert payload["histograms"] == {
        "OSFILE_WRITEATOMIC_JANK_MS": [144, 13, 0, 0, 0, 0, 0, 0, 0, 0,
                                       13, 9.010913372039795, 6.245889186859131, -1, -1]}
    blocked = [0] * 20
    blocked[10] = 1  # bucket 103
    assert payload["keyedHistograms"] == {
        "BLOCKED_ON_PLUGIN_MODULE_INIT_MS": {
            "Shockwave Flash16.0.0.305": blocked + [143, 4.969813346862793, 24.699045181274414, -1, -1]},
        "SEARCH_DEFAULT_ENGINE": {"other-Wikipédia (fr)": [0, 1, 0, 1, -1, -1, 1, 0],
                                  "google": [0, 1, 0, 1, -1, -1, 1, 0]},
        "SEARCH_COUNTS": {"google.searchbar": [16, 0, 0, 16, -1, -1, 16, 0]},
    }
    # The UTF-8 text of the original's test_utf8 survives decoding, conversion and storing.
    engine_name = payload["simpleMeasurements"]["UITelemetry"]["toolbars"]["currentSearchEngine"]
    assert engine_name.startswith("Wikipédia")
    assert "Wikipédia".encode() in record.stored_json and record.warnings == []
    # Dimensions come from the built info when the path has only the id.
    assert (record.dims["reason"], record.dims["appName"], record.dims["appUpdateChannel"]) == \
        ("saved-session", "Firefox", "nightly")


def test_unified_ping_pointed_at_a_2013_revision_drops_what_it_does_not_define(engine):
    ping = unified_ping()
    ping["payload"]["info"]["revision"] = SEEDED_2013_REVISION  # seeded in the package's cache
    record = decoded(engine, json.dumps(ping).encode())
    assert record.payload["histograms"] == {} and record.payload["keyedHistograms"] == {}
    assert record.warnings == ["unknown_histogram"] * 4
    assert snapshot()["convert"]["warning_names"]["unknown_histogram"] == 4


def test_unified_ping_as_it_is_is_parked_offline_and_never_fails_its_file(tmp_path):
    write_spool(tmp_path, [(item.path, item.body) for item in UNIFIED_ITEMS] +
                [(f"{uuid(3)}/{DIMS_PATH}", FIXTURE_PING.body)])
    engine = processor_engine(tmp_path, overrides=["convert.histograms.server=null",
                                                   f"convert.histograms.cache_dir={tmp_path / 'cache'}"])
    summary = Processor(engine).run_once()
    assert summary.files == 1 and summary.failed_files == [] and summary.retry_later == []
    assert (summary.records_valid, summary.records_invalid, summary.records_parked) == (1, 0, 2)
    parked = list((tmp_path / "pending").rglob("*"))
    assert any("mozilla-central-eab4a81e4457" in str(path) for path in parked), parked


def test_unified_ping_whose_revision_the_server_lacks_is_quarantined_not_failed(tmp_path):
    from hg_stub import HgStub

    stub = HgStub().start()
    try:
        write_spool(tmp_path, [(UNIFIED_ITEMS[0].path, UNIFIED_ITEMS[0].body)])
        engine = processor_engine(tmp_path, overrides=[f"convert.histograms.server={stub.url}",
                                                       f"convert.histograms.cache_dir={tmp_path / 'cache'}",
                                                       "convert.histograms.retries=0"])
        summary = Processor(engine).run_once()
    finally:
        stub.stop()
    assert summary.files == 1 and summary.failed_files == []
    assert (summary.records_valid, summary.records_invalid, summary.records_parked) == (0, 1, 0)
    assert snapshot()["processor"]["invalid"] == {"conversion_error": 1}


def test_unified_main_ping_converts_histograms_without_flattening(engine):
    ping = unified_ping()
    ping["type"] = "main"
    del ping["environment"]
    record = decoded(engine, json.dumps(ping).encode())
    payload = record.payload
    assert payload["version"] == 5 and "ver" not in payload and payload["info"]["reason"] == "main"
    assert payload["info"] == {k: v for k, v in expected_unified_info().items() if k in (
        "appName", "appUpdateChannel", "appVersion", "appBuildID", "arch", "platformVersion", "xpcomAbi", "vendor")} | {
        "reason": "main"}
    assert len(payload["payload"]["histograms"]["OSFILE_WRITEATOMIC_JANK_MS"]) == 15
    assert payload["payload"]["keyedHistograms"]["SEARCH_COUNTS"]["google.searchbar"][:3] == [16, 0, 0]
    assert payload["payload"]["info"]["revision"] == UNIFIED_REVISION and payload["payload"]["ver"] == 4


def test_jobs_get_bucket_bounds_of_unified_pings_flattened_or_not_keyed_included(engine):
    lookup = HistogramLookup(engine)
    main = unified_ping()
    main["type"] = "main"
    flattened = decoded(engine, json.dumps(unified_ping()).encode()).payload
    main = decoded(engine, json.dumps(main).encode()).payload
    jank = HistogramSpec(UNIFIED_DEFINITIONS).bounds("OSFILE_WRITEATOMIC_JANK_MS", bucket_count=10)
    assert len(jank) == 10 and jank[-1] == 5000
    for payload in (main, flattened):
        bounds = lookup.bounds(json.loads(json.dumps(payload)))  # as a job reads it
        assert bounds["OSFILE_WRITEATOMIC_JANK_MS"] == jank
        assert bounds["SEARCH_COUNTS"] == (0, 1, 2) and bounds["SEARCH_DEFAULT_ENGINE"] == (0, 1, 2)
    assert lookup.lookups == 1  # one revision, resolved once


def test_other_unified_ping_types_are_stored_as_they_are_with_info(engine):
    ping = {"type": "activation", "id": "x", "version": 4, "application": unified_ping()["application"],
            "payload": {"whatever": [1, 2]}}
    record = decoded(engine, json.dumps(ping).encode(), path=uuid(4))
    assert record.payload == {**ping, "version": 5, "info": {**{k: v for k, v in expected_unified_info().items()
                                                                  if k in ("appName", "appUpdateChannel",
                                                                           "appVersion", "appBuildID", "arch",
                                                                           "platformVersion", "xpcomAbi",
                                                                           "vendor")}, "reason": "activation"}}
    assert (record.dims["reason"], record.dims["appName"]) == ("OTHER", "Firefox")  # not in the schema


@pytest.mark.parametrize("change, message", [
    (lambda p: p.update(version=5), r"already converted \(version 5\)"),
    (lambda p: p.update(version=6), "unified ping version is 6"),
    (lambda p: p.update(version="4"), "unified ping version is '4'"),
    (lambda p: p.pop("type"), "has no type"),
    (lambda p: p.pop("application"), "has no application object"),
    (lambda p: p.pop("payload"), "has no payload object"),
    (lambda p: p.update(info={}), "already has an info field"),
    (lambda p: p["payload"].pop("info"), "saved-session ping has no payload.info"),
    (lambda p: p["payload"].pop("histograms"), "saved-session ping has no payload.histograms"),
    (lambda p: p.pop("environment"), "saved-session ping has no environment"),
    (lambda p: p["payload"]["keyedHistograms"].update(SEARCH_COUNTS={"k": {"values": {"7": 1}}}),
     r"keyedHistograms\['SEARCH_COUNTS'\]\['k'\]: bucket key '7'"),
    (lambda p: p["payload"].update(keyedHistograms=[1]), "keyedHistograms must be an object"),
])
def test_malformed_unified_pings_are_bad_payloads(engine, change, message):
    ping = unified_ping()
    change(ping)
    with pytest.raises(RecordError, match=message) as caught:
        decoded(engine, json.dumps(ping).encode())
    assert caught.value.category == "bad_payload"


def test_saved_session_flattening_follows_the_originals_maps(engine):
    ping = unified_ping()
    ping["payload"]["type"] = "clashes with the top level"
    ping["payload"]["info"]["appName"] = "ignored: info already has it"
    ping["environment"]["system"]["os"]["name"] = "Windows_95"
    ping["environment"]["system"]["gfx"] = {"D2DEnabled": True, "adapters": [
        {"description": "first", "vendorID": "0x10de", "RAM": 1024, "GPUActive": True},
        {"description": "second", "deviceID": "0x0166", "GPUActive": False}]}
    ping["environment"]["system"]["hdd"] = None  # a null section is skipped, not a crash
    ping["environment"]["addons"] = {"activeExperiment": {"id": "exp", "branch": "b"}, "theme": None}
    ping["environment"]["system"]["device"] = {"model": "m", "isTablet": False}
    del ping["clientId"]
    payload = decoded(engine, json.dumps(ping).encode()).payload
    info = payload["info"]
    assert payload["type"] == "saved-session" and payload["payload.type"] == "clashes with the top level"
    assert info["appName"] == "Firefox" and info["OS"] == "WINNT" and info["D2DEnabled"] is True
    assert (info["adapterDescription"], info["adapterVendorID"], info["adapterRAM"]) == ("first", "0x10de", 1024)
    assert (info["adapterDescription2"], info["adapterDeviceID2"], info["isGPU2Active"]) == ("second", "0x0166", False)
    assert (info["activeExperiment"], info["activeExperimentBranch"]) == ("exp", "b") and "persona" not in info
    assert (info["device"], info["tablet"]) == ("m", False) and "profileHDDModel" not in info
    assert payload["clientID"] is None


def test_an_environment_field_info_already_has_is_kept_apart(engine):
    ping = unified_ping()
    ping["payload"]["info"]["locale"] = "fr"  # info gets it from payload.info first
    info = decoded(engine, json.dumps(ping).encode()).payload["info"]
    assert (info["locale"], info["environment.locale"]) == ("fr", "en-US")


# ---------------------------------------------------------------- keyed histograms of classic payloads


def test_classic_keyed_histograms_convert_with_the_same_spec(engine):
    payload = orjson.loads(gzip.decompress(FIXTURE_PING.body))
    payload["keyedHistograms"] = {"GC_MS": {"a": {"values": {"0": 1, "1": 0}, "sum": 0, "log_sum": 0,
                                                  "log_sum_squares": 0}},
                                  "NO_SUCH_HISTOGRAM": {"a": {"values": {}}}}
    record = decoded(engine, orjson.dumps(payload))
    row = record.payload["keyedHistograms"]["GC_MS"]["a"]
    assert row[0] == 1 and row[-5:] == [0, 0, 0, -1, -1]
    assert list(record.payload["keyedHistograms"]) == ["GC_MS"]
    assert record.warnings.count("unknown_histogram") == 3  # two in the fixture (see test_conversion), one here


# ---------------------------------------------------------------- text that is not UTF-8


def damaged_fixture_ping() -> bytes:
    body = orjson.dumps({**orjson.loads(gzip.decompress(FIXTURE_PING.body)), "note": "Wikip\u00e9dia"})
    return body.replace("Wikip\u00e9dia".encode(), b"Wikip\xe9dia")  # Latin-1, as a broken client sent it


def test_invalid_utf8_is_replaced_counted_and_the_record_kept(tmp_path):
    write_spool(tmp_path, [(f"{uuid(1)}/{DIMS_PATH}", damaged_fixture_ping()),
                           (f"{uuid(2)}/{DIMS_PATH}", gzip.compress(damaged_fixture_ping())),
                           (f"{uuid(3)}/{DIMS_PATH}", b'{"ver": 1, "info": {"reason": "\\ud800x"}}'),
                           (f"{uuid(4)}/{DIMS_PATH}", b'{"ver": 1, "info": {"reason": "\xff"')])
    engine = processor_engine(tmp_path, overrides=["convert.histograms.server=null"])
    summary = Processor(engine).run_once()
    assert (summary.records_valid, summary.records_invalid) == (3, 1)
    stored = {}
    for path in (tmp_path / "archive").rglob("*.xz"):
        for line in lzma.decompress(path.read_bytes()).splitlines():
            record_id, _, body = line.partition(b"\t")
            stored[record_id.decode()] = (path.relative_to(tmp_path / "archive").parts[:2], json.loads(body))
    assert stored[uuid(1)][1]["note"] == stored[uuid(2)][1]["note"] == "Wikip\ufffddia"
    assert stored[uuid(1)][1]["ver"] == 2
    assert stored[uuid(3)][1]["info"]["reason"] == "\ufffdx"
    assert stored[uuid(4)][0] == ("_invalid", "corrupted_data")
    assert snapshot()["processor"]["decode_warnings"] == {"invalid_utf8_replaced": 2, "lone_surrogate_replaced": 1}


def test_a_valid_surrogate_pair_and_valid_utf8_take_the_fast_path(engine):
    record = decoded(engine, b'{"ver": 1, "info": {"reason": "\\ud83d\\ude00 \xc3\xa9"}}')
    assert record.payload["info"]["reason"] == "\U0001F600 é" and record.warnings == []


# ---------------------------------------------------------------- geoCountry (the telemetry-geoip plugin)


def test_geo_country_of_firefox_os_pings_through_the_processor(tmp_path):
    try:
        import telemetry_geoip
    except ImportError:
        from conftest import require_component

        require_component("the telemetry-geoip plugin is not installed (pip install -e plugins/telemetry-geoip)")
    writer_records = [(uuid(1), "8.8.8.8"), (uuid(2), "2001:4860:4860::8888"), (uuid(3), "127.0.0.1"),
                      (uuid(4), None)]
    from telemetry_core.store.spool.files import SpoolWriter

    writer = SpoolWriter(tmp_path / "spool", "n1")
    for record_id, address in writer_records:
        writer.append(record_id, json.dumps(FXOS).encode(), client_addr=address, timestamp_ms=1395852542588)
    writer.close()
    engine = processor_engine(tmp_path, telemetry_geoip, overrides=["convert.histograms.server=null",
                                                                    "receive.record_client_addr=true"])
    assert Processor(engine).run_once().records_valid == 4
    stored = {}
    for path in (tmp_path / "archive").rglob("*.xz"):
        for line in lzma.decompress(path.read_bytes()).splitlines():
            record_id, _, body = line.partition(b"\t")
            stored[record_id.decode()] = json.loads(body)["info"].get("geoCountry")
    assert stored == {uuid(1): "US", uuid(2): "US", uuid(3): "??", uuid(4): None}


def test_convert_command_takes_every_shape_and_damaged_text(telemetry_cli, tmp_path):
    import subprocess

    unified_line = b"u\t" + next(item for item in UNIFIED_ITEMS if not item.is_gzip).body.replace(
        UNIFIED_REVISION.encode(), SEEDED_2013_REVISION.encode())
    lines = b"\n".join([b"a\t" + json.dumps(ANR).encode(), b"f\t" + json.dumps(FXOS).encode(), unified_line,
                        b'l\t{"ver": 1, "info": {"reason": "caf\xe9"}}'])
    result = subprocess.run([*telemetry_cli, "convert", "--set", f"data_dir={tmp_path}"], input=lines,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    converted = {line.split(b"\t")[0].decode(): json.loads(line.split(b"\t", 1)[1])
                 for line in result.stdout.splitlines()}
    assert (converted["a"]["ver"], converted["f"]["ver"], converted["u"]["version"]) == (2, 2, 5)
    assert converted["f"]["info"]["appName"] == "FirefoxOS" and converted["u"]["info"]["OS"] == "Darwin"
    assert converted["l"]["info"]["reason"] == "caf\ufffd"
