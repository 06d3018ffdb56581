"""Shared fixtures: a fresh plugin manager and fresh metrics for every test."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from greplin import scales

from telemetry_core.config import read_config
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
