"""The edge's counters, and how ``/status`` and ``/metrics`` show a whole node.

``scales`` stats live in one process, and a node runs several edge worker
processes behind one port, so any one request reaches one worker.  To show
the node and not one worker's share of it:

* every worker publishes a snapshot of its stats every
  ``receive.metrics_interval_s`` (and when it exits) to
  ``<data_dir>/metrics/edge.<node_id>.worker-<n>.json``, and the supervisor
  its own (worker restarts) to ``edge.<node_id>.supervisor.json``; the
  files have the layout of ``telemetry metrics`` snapshots, so that command
  lists them too;
* the worker that answers ``/status`` or ``/metrics`` reads its siblings'
  files (written by live processes only; a file whose pid is gone is left
  out) and uses its own live stats for itself.

``/status`` (:meth:`NodeMetrics.status`) is JSON: ``workers`` holds each
worker's own scales tree with its pid and the snapshot's age, and ``node``
their sum (counters add up; of a latency only ``count``, ``sum``, ``min``
and ``max`` can be combined, so percentiles appear per worker only).
``/metrics`` (:meth:`NodeMetrics.prometheus`) labels every sample with
``node`` and ``worker``; add them up in Prometheus (``sum without
(worker)``).  A restarted worker starts from zero, which Prometheus treats
as a counter reset.  Numbers of other workers are at most one publishing
interval old.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from greplin import scales

from ..atomic_files import write_json_atomically
from ..metrics.stats import Family, LatencyStat, add_families, render_families, snapshot
from ..store.spool.files import process_alive

__all__ = ["EdgeStats", "NodeMetrics", "SupervisorStats", "merge_trees", "snapshot_path", "write_document"]

#: Keys of a latency distribution that cannot be added up across workers.
_COMBINED = {"min": min, "max": max}
_DROPPED = {"mean", "median", "75percentile", "95percentile", "99percentile", "999percentile"}


class EdgeStats:
    """The counters of one edge worker; published under ``/edge`` in scales.

    ``requests`` counts submission requests (a batch is one request);
    ``accepted`` and ``accepted_bytes`` count spooled records and their body
    bytes; ``rejected[reason]`` counts refusals by reason (batch records one
    by one); ``responses[status]`` counts answered statuses; ``latency`` is
    the time from the start of a submission's handling to its answer.
    ``/edge/spool`` mirrors the spool writer's own counters.

    The hot path adds to plain attributes (a scales descriptor costs about
    a microsecond per update); :meth:`sync` copies them into scales, which
    the worker does before every snapshot and every ``/status``.
    """

    COUNTERS = ("requests", "accepted", "accepted_bytes", "batch_requests", "batch_records", "in_flight",
                "accepted_hook_errors")
    SPOOL_COUNTERS = ("records", "bytes", "files_opened", "files_finished", "file_syncs", "write_errors")

    def __init__(self) -> None:
        self.edge = scales.collection("/edge", *(scales.IntStat(name) for name in self.COUNTERS),
                                      scales.IntDictStat("rejected"), scales.IntDictStat("responses"),
                                      LatencyStat("latency"))
        self.spool = scales.collection("/edge/spool", *(scales.IntStat(name) for name in self.SPOOL_COUNTERS))
        self.requests = self.accepted = self.accepted_bytes = self.batch_requests = self.batch_records = 0
        self.in_flight = self.accepted_hook_errors = 0
        self.rejected: Counter[str] = Counter()
        self.responses: Counter[str] = Counter()
        self.latency = self.edge.latency  # the live distribution itself: adding a sample is cheap
        self._writer_stats: Any = None

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def watch_spool(self, writer_stats: Any) -> None:
        """Mirror a :class:`~telemetry_core.store.spool.files.SpoolWriterStats` (or any object with those fields)."""
        self._writer_stats = writer_stats

    def sync(self) -> None:
        """Copy the counters into scales."""
        edge = self.edge
        for name in self.COUNTERS:
            setattr(edge, name, getattr(self, name))
        for name, counts in (("rejected", self.rejected), ("responses", self.responses)):
            published = getattr(edge, name)
            for key, value in counts.items():
                if published[key] != value:
                    published[key] = value
        if self._writer_stats is not None:
            for name in self.SPOOL_COUNTERS:
                setattr(self.spool, name, int(getattr(self._writer_stats, name, 0)))


class SupervisorStats:
    """The supervisor's counters, under ``/edge_supervisor``: workers started and exits."""

    def __init__(self) -> None:
        self.stats = scales.collection("/edge_supervisor", scales.IntStat("workers"), scales.IntStat("started"),
                                       scales.IntStat("exits"), scales.IntStat("restarts"),
                                       scales.IntStat("start_failures"))

    def tree(self) -> dict[str, Any]:
        return {"edge_supervisor": {name: getattr(self.stats, name)
                                    for name in ("workers", "started", "exits", "restarts", "start_failures")}}


def snapshot_path(directory: Path, node_id: str, member: str) -> Path:
    """The file a node member (``worker-<n>`` or ``supervisor``) publishes its stats to."""
    return directory / f"edge.{node_id}.{member}.json"


def write_document(path: Path, document: dict[str, Any]) -> None:
    """Atomically replace ``path`` with ``document`` as JSON (not synced: metrics, not data)."""
    write_json_atomically(path, document, durable=False)


def _pid_alive(pid: Any) -> bool:
    return isinstance(pid, int) and not isinstance(pid, bool) and process_alive(pid)


class NodeMetrics:
    """One worker's view of the node's metrics (see the module docstring).

    ``refresh`` is called before this worker's own stats are read (the edge
    passes :meth:`EdgeStats.sync`).
    """

    def __init__(self, directory: Path, node_id: str, worker: int,
                 refresh: Callable[[], None] | None = None) -> None:
        self.refresh = refresh
        self.directory = Path(directory)
        self.node_id = node_id
        self.worker = worker
        self.started_at = time.time()
        self.path = snapshot_path(self.directory, node_id, f"worker-{worker}")

    def own_document(self) -> dict[str, Any]:
        """This worker's live stats as a snapshot document."""
        if self.refresh is not None:
            self.refresh()
        return {"command": self.path.stem, "node_id": self.node_id, "worker": self.worker, "pid": os.getpid(),
                "started_at": self.started_at, "written_at": time.time(), "stats": snapshot()}

    def publish(self, document: dict[str, Any] | None = None) -> None:
        """Write this worker's snapshot (``document`` taken earlier, or now)."""
        write_document(self.path, document if document is not None else self.own_document())

    def documents(self) -> tuple[dict[int, dict[str, Any]], dict[str, Any] | None]:
        """Every live worker's latest document by worker number (this one live), and the supervisor's."""
        workers: dict[int, dict[str, Any]] = {self.worker: self.own_document()}
        supervisor = None
        for path in sorted(self.directory.glob(f"edge.{self.node_id}.*.json")):
            member = path.stem[len(f"edge.{self.node_id}."):]
            if member == f"worker-{self.worker}":
                continue
            try:
                document = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced right now, or gone: the next read sees it
            if not isinstance(document, dict) or not _pid_alive(document.get("pid")):
                continue
            if member == "supervisor":
                supervisor = document
            elif member.startswith("worker-") and member[7:].isdigit():
                workers[int(member[7:])] = document
        return dict(sorted(workers.items())), supervisor

    def status(self) -> dict[str, Any]:
        """The ``/status`` document."""
        workers, supervisor = self.documents()
        now = time.time()
        return {
            "node_id": self.node_id,
            "answered_by": self.worker,
            "workers": {str(index): {"pid": doc.get("pid"), "age_s": round(now - doc.get("written_at", now), 3),
                                     "live": index == self.worker, "stats": doc.get("stats", {})}
                        for index, doc in workers.items()},
            "node": merge_trees([doc.get("stats", {}) for doc in workers.values()]),
            "supervisor": (supervisor or {}).get("stats"),
        }

    def prometheus(self) -> str:
        """The ``/metrics`` text: every worker's samples labelled ``node`` and ``worker``."""
        workers, supervisor = self.documents()
        families: dict[str, Family] = {}
        for index, doc in workers.items():
            add_families(families, doc.get("stats", {}), {"node": self.node_id, "worker": str(index)})
        if supervisor is not None:
            add_families(families, supervisor.get("stats", {}), {"node": self.node_id, "worker": "supervisor"})
        return render_families(families)


def merge_trees(trees: list[Any]) -> Any:
    """Add up stats trees: numbers are summed, ``min``/``max`` combined, percentiles and means dropped."""
    dicts = [tree for tree in trees if isinstance(tree, dict)]
    if dicts:
        merged: dict[str, Any] = {}
        for key in sorted({key for tree in dicts for key in tree}):
            if key in _DROPPED:
                continue
            values = [tree[key] for tree in dicts if key in tree]
            if key in _COMBINED and all(_is_number(v) for v in values):
                merged[key] = _COMBINED[key](values)
            else:
                merged[key] = merge_trees(values)
        return merged
    numbers = [value for value in trees if _is_number(value)]
    if numbers and len(numbers) == len(trees):
        return sum(numbers)
    return trees[0] if trees else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
