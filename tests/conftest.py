"""Shared fixtures: a fresh plugin manager and fresh metrics for every test."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from greplin import scales

from telemetry_core.config.loader import read_config
from telemetry_core.engine import Engine
from telemetry_core.plugins import make_plugin_manager

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fresh_metrics() -> None:
    """Every test starts with empty scales stats.

    ``scales.reset()`` walks every object in the heap; collect first, so dead
    weak proxies (botocore leaves some) are gone before it looks at them.
    """
    gc.collect()
    scales.reset()


@pytest.fixture
def pm():
    """A fresh plugin manager with the specs and the hook-call monitor, and no plugins."""
    return make_plugin_manager()


@pytest.fixture
def make_engine(pm, tmp_path: Path) -> Callable[..., Engine]:
    """Build an engine from ``pm`` (register test plugins first) with data in tmp_path.

    Keyword arguments become ``--set`` overrides: ``make_engine(**{"compress.level": 3})``.
    """
    def build(*plugins: Any, **overrides: Any) -> Engine:
        for plugin in plugins:
            pm.register(plugin)
        assignments = [f"data_dir={tmp_path / 'data'}"] + [f"{k}={v}" for k, v in overrides.items()]
        return Engine.from_plugin_manager(pm, read_config(None, assignments))
    return build


@pytest.fixture
def telemetry_cli() -> list[str]:
    """The command line that runs the installed ``telemetry`` console script."""
    return [str(Path(sys.executable).parent / "telemetry")]


def require_component(reason: str) -> None:
    """Skip a test whose real component is missing here; with
    ``TELEMETRY_REQUIRE_COMPONENTS=1`` (set by .ci/run) fail it instead."""
    if os.environ.get("TELEMETRY_REQUIRE_COMPONENTS") == "1":
        pytest.fail(f"required component missing: {reason}")
    pytest.skip(reason)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real, small filesystem (a 24 MiB tmpfs) that a test can fill up.

    Mounting needs root (CI runs as root); elsewhere the test is skipped, or
    fails under ``TELEMETRY_REQUIRE_COMPONENTS=1``.
    """
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        require_component("mounting a tmpfs needs root (CI runs as root)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        require_component(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
