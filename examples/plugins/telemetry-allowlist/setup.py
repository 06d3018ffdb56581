"""An example third-party telemetry-core plugin: accept only some update channels."""

from setuptools import setup

setup(
    name="telemetry-allowlist",
    version="1.0.0",
    description="telemetry-core plugin: refuse submissions from update channels not on an allow list",
    py_modules=["telemetry_allowlist"],
    install_requires=["telemetry-core"],
    entry_points={"telemetry": ["allowlist = telemetry_allowlist:plugin"]},
)
