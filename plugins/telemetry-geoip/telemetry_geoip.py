"""``info.geoCountry`` for Firefox OS pings, from the client address, offline.

Registered through the entry point ``geoip`` in the group ``telemetry``.
telemetry-server's ``convert.py`` added ``info.geoCountry`` (an ISO 3166
country code, ``"??"`` when unknown) to every ping whose ``info.appName``
is ``FirefoxOS`` -- the Firefox OS 1.3 payloads included, whose ``info``
conversion builds -- when the client address was known.  This plugin does
the same after the convert stage (a ``wrapper`` of
``telemetry_convert_payload``), with the legacy GeoLite country databases
Debian ships in ``geoip-database`` (``/usr/share/GeoIP/GeoIP.dat`` and
``GeoIPv6.dat``) read by ``pygeoip``.  No lookup ever leaves the machine.

It needs the client address: ``receive.record_client_addr: true``.
Without it records have no address, nothing is looked up and no
``geoCountry`` is written (as in the original when it had no address).

Configure in the config file (defaults shown)::

    plugins:
      geoip:
        ipv4_database: /usr/share/GeoIP/GeoIP.dat
        ipv6_database: /usr/share/GeoIP/GeoIPv6.dat
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from telemetry_core import hookimpl
from telemetry_core.config.options import Option, Section
from telemetry_core.errors import ConfigError

SECTION = "geoip"
#: What ``geoCountry`` is when no database knows the address.
UNKNOWN_COUNTRY = "??"
#: Codes the legacy databases give for "no country" (besides an empty string).
_NO_COUNTRY = frozenset({"", "--"})
DEFAULT_IPV4_DATABASE = "/usr/share/GeoIP/GeoIP.dat"
DEFAULT_IPV6_DATABASE = "/usr/share/GeoIP/GeoIPv6.dat"


class CountryLookup:
    """ISO country codes of IP addresses from the legacy GeoIP country databases."""

    def __init__(self, ipv4_database: str, ipv6_database: str) -> None:
        import pygeoip

        self._v4 = pygeoip.GeoIP(ipv4_database, pygeoip.MEMORY_CACHE)
        self._v6 = pygeoip.GeoIP(ipv6_database, pygeoip.MEMORY_CACHE)

    def country(self, addresses: str) -> str | None:
        """The country of the first address in ``addresses`` (a comma-separated list,
        as an ``X-Forwarded-For`` value) that has one; ``None`` when none has.
        Text that is not an IP address is skipped."""
        for candidate in str(addresses).split(","):
            try:
                address = ipaddress.ip_address(candidate.strip())
            except ValueError:
                continue
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            if isinstance(address, ipaddress.IPv4Address):
                code = self._v4.country_code_by_addr(str(address))
            else:
                code = self._v6.country_code_by_addr(str(address))
            if code not in _NO_COUNTRY and code is not None:
                return code
        return None


def lookup_for(engine: Any) -> CountryLookup:
    """The engine's :class:`CountryLookup`, opened on first use (kept in ``engine.state``)."""
    lookup = engine.state.get(SECTION)
    if lookup is None:
        options = engine.config.plugin_section(SECTION)
        lookup = engine.state[SECTION] = CountryLookup(options.get("ipv4_database", DEFAULT_IPV4_DATABASE),
                                                       options.get("ipv6_database", DEFAULT_IPV6_DATABASE))
    return lookup


@hookimpl
def telemetry_config_schema() -> dict[str, Section]:
    return {SECTION: Section(help="info.geoCountry for Firefox OS pings, from the client address", fields={
        "ipv4_database": Option("path", DEFAULT_IPV4_DATABASE,
                                help="Legacy GeoIP country database for IPv4 (Debian: geoip-database)"),
        "ipv6_database": Option("path", DEFAULT_IPV6_DATABASE,
                                help="Legacy GeoIP country database for IPv6 (Debian: geoip-database)"),
    })}


@hookimpl
def telemetry_configure(config: Any) -> None:
    """Refuse to start when addresses are kept but a database is missing."""
    if not config.get("receive.record_client_addr"):
        return
    options = config.plugin_section(SECTION)
    for key, default in (("ipv4_database", DEFAULT_IPV4_DATABASE), ("ipv6_database", DEFAULT_IPV6_DATABASE)):
        path = options.get(key) or default
        if not Path(path).is_file():
            raise ConfigError(f"country database {path} does not exist, and receive.record_client_addr is "
                              f"on; install it (apt-get install geoip-database) or set this key",
                              key=f"plugins.{SECTION}.{key}")


@hookimpl(wrapper=True)
def telemetry_convert_payload(record: Any, spec: Any, engine: Any):
    """After conversion: ``info.geoCountry`` for a FirefoxOS ping whose client address is known."""
    warnings = yield
    address = record.client_addr
    if address:
        info = record.payload.get("info")
        if isinstance(info, dict) and info.get("appName") == "FirefoxOS":
            info["geoCountry"] = lookup_for(engine).country(address) or UNKNOWN_COUNTRY
    return warnings
