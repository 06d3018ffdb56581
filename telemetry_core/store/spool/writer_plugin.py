"""Built-in plugin: the raw spool every edge worker appends to, built from ``receive.spool``.

``telemetry_store_spool_writer`` (``trylast``: a plugin that returns its own
writer wins) opens a :class:`~telemetry_core.store.spool.files.SpoolWriter` in
``<data_dir>/spool`` named after the node id (file names also carry the
worker's pid), with the rotation and fsync policy of ``receive.spool`` and
record limits that match the edge's request limits.  The byte format and
what each fsync policy guarantees are in ``docs/spool-format.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...hookspecs import hookimpl
from .files import SpoolWriter
from .framing import SpoolLimits

__all__ = ["SPOOL_DIR_NAME", "spool_dir", "spool_limits", "telemetry_store_spool_writer"]

#: The spool's directory under ``data_dir``.
SPOOL_DIR_NAME = "spool"


def spool_dir(config: Any) -> Path:
    """``<data_dir>/spool``: where edge workers write and the processor reads."""
    return Path(config.data_dir) / SPOOL_DIR_NAME


def spool_limits(config: Any) -> SpoolLimits:
    """Record limits that admit everything the edge accepts (a batch record can be as
    large as an inflated batch body)."""
    receive = config["receive"]
    return SpoolLimits(max_path_bytes=receive["max_path_bytes"],
                       max_body_bytes=max(receive["max_body_bytes"], receive["max_inflated_bytes"]))


@hookimpl(trylast=True)
def telemetry_store_spool_writer(engine: Any, worker: int) -> SpoolWriter:
    settings = engine.config["receive"]["spool"]
    return SpoolWriter(spool_dir(engine.config), engine.node_id,
                       max_file_bytes=settings["max_file_bytes"],
                       max_file_age_s=settings["max_file_age_s"],
                       fsync=settings["fsync"],
                       fsync_interval_ms=settings["fsync_interval_ms"],
                       limits=spool_limits(engine.config))
