"""telemetry-geoip: the lookups of telemetry-server's test_convert.py (test_plain_geo,
test_csv_geo, test_convert_geo, test_convert_bad_geo) against Debian's geoip-database,
and the plugin as the engine loads it through its entry point."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest

import telemetry_geoip
from telemetry_core.engine import Engine
from telemetry_core.errors import ConfigError
from telemetry_core.records import Record
from telemetry_core.store.process.decoder import convert

if not Path(telemetry_geoip.DEFAULT_IPV4_DATABASE).is_file():
    pytest.fail("Debian's geoip-database is not installed (apt-get install geoip-database)", pytrace=False)

FXOS = {"ver": 3, "deviceinfo.platform_build_id": "20140325104133", "deviceinfo.platform_version": "31.0a1",
        "deviceinfo.update_channel": "default", "pingID": "e426da9f-2a29-4e09-895b-c883903956cb"}
FIREFOX = {"ver": 1, "info": {"appName": "Firefox", "reason": "idle-daily"}}


@pytest.fixture(scope="module")
def lookup() -> telemetry_geoip.CountryLookup:
    return telemetry_geoip.CountryLookup(telemetry_geoip.DEFAULT_IPV4_DATABASE, telemetry_geoip.DEFAULT_IPV6_DATABASE)


@pytest.fixture
def engine(tmp_path) -> Engine:
    return Engine.from_config(None, [f"data_dir={tmp_path}", "convert.histograms.server=null",
                                     "receive.record_client_addr=true"], configure_logs=False)


@pytest.mark.parametrize("addresses, country", [
    ("8.8.8.8", "US"),                      # Google public DNS, IPv4
    ("2001:4860:4860::8888", "US"),         # Google public DNS, IPv6
    ("142.68.238.79", "CA"),
    ("::ffff:8.8.8.8", "US"),               # IPv4-mapped IPv6 uses the IPv4 database
    ("127.0.0.1", None), ("::1", None), ("10.0.0.1", None), ("0.0.0.0", None),
    ("", None), (",,,,", None), ("bogus", None), ("500.500.500.500", None), ("123", None),
    ("127.0.0.1, 8.8.8.8", "US"), ("127.0.0.1, 10.0.0.1", None), ("127.0.0.1, 142.68.238.79", "CA"),
    ("8.8.8.8, 142.68.238.79", "US"), ("142.68.238.79, 8.8.8.8", "CA"),
    ("142.68.238.79 ,,127.0.0.1,, 8.8.8.8", "CA"),
])
def test_country_of_addresses(lookup, addresses, country):
    assert lookup.country(addresses) == country


def converted(engine: Engine, payload: dict, client_addr: str | None) -> dict:
    record = Record(id="r", path="", raw=b"", received_at_ms=0, payload=json.loads(json.dumps(payload)),
                    client_addr=client_addr)
    convert(engine, record)
    return record.payload


def test_the_plugin_is_loaded_through_its_entry_point(engine):
    assert metadata.distribution("telemetry-geoip").version == "1.0.0"
    info = {p.name: p for p in engine.plugins}["geoip"]
    assert (info.source, info.distribution) == ("entrypoint", "telemetry-geoip")
    assert "telemetry_convert_payload" in info.hooks


@pytest.mark.parametrize("client_addr, country", [
    ("8.8.8.8", "US"), ("2001:4860:4860::8888", "US"), ("127.0.0.1", "??"), ("::1", "??"),
    ("0.0.0.0", "??"), ("bogus", "??"),
])
def test_firefox_os_pings_get_geo_country_after_conversion(engine, client_addr, country):
    payload = converted(engine, FXOS, client_addr)
    assert payload["ver"] == 2 and payload["info"]["appName"] == "FirefoxOS"
    assert payload["info"]["geoCountry"] == country


def test_no_address_no_lookup_and_other_pings_are_untouched(engine):
    assert "geoCountry" not in converted(engine, FXOS, None)["info"]
    for address in ("8.8.8.8", "2001:4860:4860::8888", "127.0.0.1"):
        payload = converted(engine, FIREFOX, address)
        assert payload["ver"] == 2 and "geoCountry" not in payload["info"]


def test_a_missing_database_refuses_to_start_only_when_addresses_are_kept(tmp_path):
    missing = tmp_path / "nope.dat"
    with pytest.raises(ConfigError, match="plugins.geoip.ipv4_database: country database .* does not exist"):
        Engine.from_config(None, [f"data_dir={tmp_path}", "receive.record_client_addr=true",
                                  f"plugins.geoip.ipv4_database={missing}"], configure_logs=False)
    Engine.from_config(None, [f"data_dir={tmp_path}", f"plugins.geoip.ipv4_database={missing}"],
                       configure_logs=False)
