"""telemetry-geoip: info.geoCountry for Firefox OS pings, for telemetry-core."""

from pathlib import Path

from setuptools import setup

setup(
    name="telemetry-geoip",
    version="1.0.0",
    description="telemetry-core plugin: info.geoCountry for Firefox OS pings from an offline country database",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MPL-2.0",
    python_requires=">=3.11",
    py_modules=["telemetry_geoip"],
    # pygeoip (LGPL-3.0+) reads the legacy GeoIP .dat files; the data comes from Debian's geoip-database.
    install_requires=["telemetry-core", "pygeoip==0.3.2"],
    entry_points={"telemetry": ["geoip = telemetry_geoip"]},
)
