"""The dimension schema: loading, errors, OTHER/UNKNOWN, and path safety."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from telemetry_core.schema import OTHER, UNKNOWN, Schema, SchemaError, safe_component

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parent.parent


def test_shipped_schema_has_the_original_dimension_order():
    for schema in (Schema.load(REPO / "telemetry_schema.json"), Schema.load()):
        assert schema.names == ("reason", "appName", "appUpdateChannel", "appVersion", "appBuildID",
                                "submission_date")


def test_shipped_schema_is_the_originals_last_so_firefox_os_and_unified_pings_partition_by_name():
    last = json.loads((FIXTURES / "schema__telemetry_schema__HEAD_2015-02.json").read_text())
    for path in (REPO / "telemetry_schema.json", REPO / "telemetry_core" / "data" / "telemetry_schema.json"):
        assert json.loads(path.read_text()) == last
    schema = Schema.load()
    fxos = {"reason": "ftu", "appName": "FirefoxOS", "appUpdateChannel": "nightly", "appVersion": "31.0a1",
            "appBuildID": "20140618000201", "submission_date": "20140618"}
    assert schema.apply(fxos) == ("ftu", "FirefoxOS", "nightly", "31.0a1", "20140618000201", "20140618")
    unified_main = {**fxos, "reason": "main", "appName": "Firefox", "appUpdateChannel": "release"}
    assert schema.apply(unified_main)[:3] == ("main", "Firefox", "release")
    assert schema.apply({**fxos, "reason": "activation"})[0] == OTHER


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("schema__*.json")))
def test_every_original_schema_loads(fixture):
    assert Schema.load(FIXTURES / fixture).names


def test_values_outside_the_allowed_list_become_other():
    schema = Schema.load()
    values = schema.apply({"reason": "idle-daily", "appName": "Netscape", "appUpdateChannel": "release",
                           "appVersion": "23.0.1", "appBuildID": "20130814063812"})
    assert values == ("idle-daily", OTHER, "release", "23.0.1", "20130814063812", UNKNOWN)


def test_numeric_ranges():
    schema = Schema.load(FIXTURES / "schema__cpp_worker_test_telemetry_schema.json")
    assert schema.dimensions[-1].apply(450) == "450"
    assert schema.dimensions[-1].apply("499") == "499"
    assert schema.dimensions[-1].apply(501) == OTHER
    assert schema.dimensions[-1].apply("lots") == OTHER
    assert schema.dimensions[-1].apply(True) == OTHER


@pytest.mark.parametrize("hostile", ["..", ".", "../../etc", "a/b", "a\\b", "nul\0byte", "tab\there", "\n",
                                     "x" * 1000, "é", "_invalid", "_ledger"])
def test_hostile_values_cannot_escape_the_store(hostile):
    component = Schema.load().dimensions[3].apply(hostile)  # appVersion allows "*"
    assert "/" not in component and "\\" not in component and "\0" not in component
    assert component not in (".", "..") and len(component) <= 100
    assert not component.startswith("_")  # reserved for the system's own areas
    assert component == safe_component(hostile)


@pytest.mark.parametrize("document,message", [
    ([], "must be a JSON object"),
    ({"version": 2, "dimensions": []}, "unsupported schema version"),
    ({"version": 1, "dimensions": {}}, "'dimensions' must be a list"),
    ({"version": 1, "dimensions": []}, "at least one dimension"),
    ({"version": 1, "dimensions": ["reason"]}, "must be an object"),
    ({"version": 1, "dimensions": [{"field_name": "../x", "allowed_values": "*"}]}, "must be an identifier"),
    ({"version": 1, "dimensions": [{"field_name": "a", "allowed_values": []}]}, "allowed_values must be"),
    ({"version": 1, "dimensions": [{"field_name": "a", "allowed_values": {"min": 5, "max": 1}}]}, "min <= max"),
    ({"version": 1, "dimensions": [{"field_name": "a", "allowed_values": "*"},
                                   {"field_name": "a", "allowed_values": "*"}]}, "duplicate field_name"),
])
def test_malformed_schemas(tmp_path, document, message):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(document))
    with pytest.raises(SchemaError, match=message):
        Schema.load(path)


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(SchemaError, match="cannot read schema"):
        Schema.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1,')
    with pytest.raises(SchemaError, match="not valid JSON"):
        Schema.load(bad)
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * (2 << 20))
    with pytest.raises(SchemaError, match="larger than"):
        Schema.load(huge)
