"""What a node holds locally that ``telemetry reconcile`` must account for.

* ``failed/<name>``: spool files that failed ``process.max_attempts`` times,
  each with ``failed/<name>.reason``; their records were acknowledged and
  are not published.
* ``pending/<revision key>/*.spool``: records *parked* until the
  Histograms.json revision they need can be fetched (listed in their
  manifest's ``parked`` field).
* ``state/replay/*.json``: journals of replay spool files the processor has
  not published yet (see :mod:`telemetry_core.store.process.replay`).

Spool files are read with :class:`~telemetry_core.store.spool.files.SpoolReader`; a
record's id is the first path segment, as the processor parses it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .pending import PENDING_DIR
from .decoder import SUBMIT_PREFIX
from .replay import local_journals, spool_file_present
from ..spool.files import SpoolReader


@dataclass
class HeldFile:
    """One local spool file: where it is (relative to ``data_dir``), the ids of its records,
    and for ``failed/`` the last error of its ``.reason`` file."""

    path: str
    record_ids: list[str]
    reason: str = ""
    error: str | None = None  # the file could not be read


@dataclass
class LocalHoldings:
    failed: list[HeldFile] = field(default_factory=list)
    pending: list[HeldFile] = field(default_factory=list)
    #: Records of replay spool files whose journal is not published yet.
    replay_waiting: int = 0

    @property
    def pending_ids(self) -> set[str]:
        return {record_id for held in self.pending for record_id in held.record_ids}

    @property
    def pending_paths(self) -> set[str]:
        return {held.path for held in self.pending}


def record_id_of(engine: Any, path: str) -> str:
    """The submission id of a spooled path (``-`` when it has none), as the processor parses it."""
    relative = path[len(SUBMIT_PREFIX):] if path.startswith(SUBMIT_PREFIX) else path.lstrip("/")
    parsed = engine.parse_path(path=relative)
    return getattr(parsed, "id", None) or "-"


def read_held_file(engine: Any, data_dir: Path, path: Path) -> HeldFile:
    relative = path.relative_to(data_dir).as_posix()
    try:
        ids = [record_id_of(engine, record.path) for record in SpoolReader(path)]
    except (OSError, ValueError) as exc:
        return HeldFile(relative, [], error=f"{type(exc).__name__}: {exc}")
    return HeldFile(relative, ids)


def failed_reason(path: Path) -> str:
    """The last error of ``<path>.reason``, or why there is none."""
    try:
        reason = json.loads(path.with_name(path.name + ".reason").read_text())
        return str(reason.get("last_error") or reason)
    except FileNotFoundError:
        return "no .reason file"
    except (OSError, ValueError) as exc:
        return f"unreadable .reason file ({exc})"


def local_holdings(engine: Any) -> LocalHoldings:
    """Read ``failed/``, ``pending/`` and the unpublished replay journals of ``engine``'s data_dir."""
    data_dir = Path(engine.config.data_dir)
    holdings = LocalHoldings()
    failed_dir = data_dir / "failed"
    if failed_dir.is_dir():
        for path in sorted(failed_dir.iterdir()):
            if path.is_file() and not path.name.endswith(".reason") and not path.name.startswith("."):
                held = read_held_file(engine, data_dir, path)
                held.reason = failed_reason(path)
                holdings.failed.append(held)
    pending_dir = data_dir / PENDING_DIR
    if pending_dir.is_dir():
        for path in sorted(pending_dir.glob("*/*.spool")):
            if path.is_file():
                holdings.pending.append(read_held_file(engine, data_dir, path))
    for path, entries in local_journals(data_dir):
        if not isinstance(entries, Exception) and spool_file_present(data_dir, path.name[: -len(".json")]):
            holdings.replay_waiting += len(entries)
    return holdings
