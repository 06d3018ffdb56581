"""Helpers for processor tests: an engine with the built-ins, and spool files to feed it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from telemetry_core.config.loader import read_config
from telemetry_core.engine import Engine
from telemetry_core.plugins import load_plugins, make_plugin_manager
from telemetry_core.store.spool.files import SpoolReader, SpoolWriter

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_PING = next(iter(SpoolReader(FIXTURES / "payload_v1_packed_log__telemetry1.log")))
DIMS_PATH = "idle-daily/Firefox/23.0.1/release/20130814063812"


def processor_engine(data_dir: Path, *plugins: Any, overrides: list[str] | None = None) -> Engine:
    """An engine with every built-in plugin plus ``plugins``, data in ``data_dir``."""
    pm = make_plugin_manager()
    load_plugins(pm, entry_points=False)
    for plugin in plugins:
        pm.register(plugin)
    # xz: these tests read the published files as the original tools did; zstd (the default) has its own tests
    assignments = [f"data_dir={data_dir}", "node_id=n1", "process.retry_backoff=0", "compress.codec=xz"] + list(
        overrides or [])
    return Engine.from_plugin_manager(pm, read_config(None, assignments))


def uuid(index: int) -> str:
    return f"{index:08x}-0000-4000-8000-{index:012x}"


def write_spool(data_dir: Path, records: list[tuple[str, bytes]], timestamp_ms: int = 1378822911255) -> Path:
    """One finished spool file holding ``(path, body)`` records."""
    writer = SpoolWriter(data_dir / "spool", "n1")
    for path, body in records:
        writer.append(path, body, timestamp_ms=timestamp_ms)
    return writer.close()


def fixture_records(count: int, start: int = 0) -> list[tuple[str, bytes]]:
    return [(f"{uuid(i)}/{DIMS_PATH}", FIXTURE_PING.body) for i in range(start, start + count)]
