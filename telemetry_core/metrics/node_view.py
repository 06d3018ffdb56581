"""The node's ``/status`` and ``/metrics`` documents, built from every member's snapshot.

:class:`NodeView` reads the members :mod:`telemetry_core.metrics.node` publishes
(the process that answers uses its own live document for itself) and adds
what no single process counts: the spool backlog (finished and claimed spool
files, the age of the oldest) and the free space of ``data_dir``'s disk.
``/status`` is JSON (see docs/metrics.md, "One node, one view"), ``/metrics``
the Prometheus text with every sample labelled ``node`` and ``process``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from ..store.spool.files import list_finished_files
from .node import merge_trees, read_members
from .stats import Family, add_families, render_families

__all__ = ["NodeView", "spool_backlog"]

#: Counters the dashboard and the heartbeat show, as (name, path in the node's summed stats).
TOTALS = (
    ("accepted", ("edge", "accepted")),
    ("rejected", ("edge", "rejected")),
    ("processed_files", ("processor", "files_processed")),
    ("processed", ("processor", "records_valid")),
    ("quarantined", ("processor", "records_invalid")),
    ("parked", ("processor", "records_parked")),
    ("published", ("processor", "published_files")),
    ("published_bytes", ("processor", "published_bytes")),
)


def spool_backlog(data_dir: Path, now: float | None = None) -> dict[str, Any]:
    """Spool files waiting for the processor (finished, or claimed in ``work/``) and the oldest one's age."""
    now = time.time() if now is None else now
    waiting = list_finished_files(Path(data_dir) / "spool")
    work = Path(data_dir) / "work"
    if work.is_dir():
        waiting += [entry for entry in work.iterdir() if entry.is_file()]
    ages = []
    for path in waiting:
        try:
            ages.append(now - path.stat().st_mtime)
        except OSError:
            continue  # processed while we looked
    return {"files": len(ages), "oldest_age_s": round(max(ages), 3) if ages else 0.0}


def disk_free(path: Path) -> dict[str, Any]:
    try:
        stat = os.statvfs(path)
    except OSError:
        return {"path": str(path), "free_bytes": None, "total_bytes": None}
    return {"path": str(path), "free_bytes": stat.f_bavail * stat.f_frsize, "total_bytes": stat.f_blocks * stat.f_frsize}


def totals(stats: dict[str, Any]) -> dict[str, int]:
    """The headline counters of a node's summed stats (``rejected`` summed over reasons)."""
    out = {}
    for name, path in TOTALS:
        value: Any = stats
        for part in path:
            value = value.get(part, {}) if isinstance(value, dict) else {}
        if isinstance(value, dict):
            value = sum(v for v in value.values() if isinstance(v, (int, float)))
        out[name] = int(value or 0)
    return out


class NodeView:
    """Whole-node documents as seen from one member (``own`` returns its live document)."""

    def __init__(self, directory: Path, node_id: str, data_dir: Path, member: str,
                 own: Callable[[], dict[str, Any]]) -> None:
        self.directory = Path(directory)
        self.node_id = node_id
        self.data_dir = Path(data_dir)
        self.member = member
        self.own = own

    def members(self) -> dict[str, dict[str, Any]]:
        """Every live member's document; this process's is live, the ``supervisor`` file is
        left out when the ``run`` parent (the same process) publishes its whole stats."""
        members = read_members(self.directory, self.node_id)
        own = self.own()
        own.update({key: members[self.member][key] for key in ("restarts",) if key in members.get(self.member, {})})
        members[self.member] = own
        run, supervisor = members.get("run"), members.get("supervisor")
        if run is not None and supervisor is not None and run.get("pid") == supervisor.get("pid"):
            members["supervisor"] = dict(supervisor, part_of="run")
        return dict(sorted(members.items()))

    def status(self) -> dict[str, Any]:
        """The ``/status`` document."""
        members = self.members()
        now = time.time()
        counted = [doc.get("stats", {}) for doc in members.values() if doc.get("part_of") is None]
        node = merge_trees(counted)
        run = members.get("run", {})
        started = [doc.get("started_at") for doc in members.values() if isinstance(doc.get("started_at"), float)]
        return {
            "node_id": self.node_id,
            "answered_by": self.member,
            "now": now,
            "started_at": run.get("started_at") or (min(started) if started else now),
            "processes": {name: {"pid": doc.get("pid"), "age_s": round(now - doc.get("written_at", now), 3),
                                 "live": name == self.member, "restarts": doc.get("restarts", 0),
                                 "part_of": doc.get("part_of"),
                                 "started_at": doc.get("started_at"), "stats": doc.get("stats", {})}
                          for name, doc in members.items()},
            "workers": {name[len("worker-"):]: {"pid": doc.get("pid"), "age_s": round(now - doc.get("written_at", now), 3),
                                                "live": name == self.member, "stats": doc.get("stats", {})}
                        for name, doc in members.items() if name.startswith("worker-")},
            "supervisor": members.get("supervisor", {}).get("stats"),
            "node": node,
            "totals": totals(node),
            "spool_backlog": spool_backlog(self.data_dir, now),
            "disk": disk_free(self.data_dir),
            "history": run.get("history", []),
        }

    def prometheus(self) -> str:
        """The ``/metrics`` text: every member's samples labelled ``node`` and ``process``."""
        families: dict[str, Family] = {}
        for name, doc in self.members().items():
            if doc.get("part_of") is None:
                add_families(families, doc.get("stats", {}), {"node": self.node_id, "process": name})
        backlog = spool_backlog(self.data_dir)
        for key, value in (("files", backlog["files"]), ("oldest_age_s", backlog["oldest_age_s"])):
            name = f"telemetry_spool_backlog_{key}"
            families.setdefault(name, Family("gauge", f"Spool files waiting for the processor: {key}")) \
                .samples.append((name, {"node": self.node_id}, value))
        return render_families(families)
