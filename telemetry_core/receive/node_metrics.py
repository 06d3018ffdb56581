"""The edge's counters, and the edge worker's part in the node view.

Every process of a node publishes its stats and any of them can show the
whole node (:mod:`telemetry_core.metrics.node`, :mod:`telemetry_core.metrics.node_view`):
an edge worker publishes as member ``worker-<n>`` every
``receive.metrics_interval_s`` (and when it exits), the supervisor as
``supervisor``; the worker that answers ``/status`` or ``/metrics`` reads
every member's file and uses its own live stats for itself.

``/status`` is JSON: ``processes`` holds each member's scales tree with its
pid, the snapshot's age and its restarts, ``workers`` the edge workers'
(as before), ``node`` their sum (counters add up; of a latency only
``count``, ``sum``, ``min`` and ``max`` can be combined, so percentiles appear
per process only), ``totals`` the headline counters, ``spool_backlog`` and
``disk``.  ``/metrics`` labels every sample with ``node`` and ``process``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable

from greplin import scales

from ..metrics.node import MemberPublisher, member_path, merge_trees, write_document
from ..metrics.node_view import NodeView
from ..metrics.stats import LatencyStat

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
    """The file a node member (``worker-<n>``, ``supervisor`` ...) publishes its stats to."""
    return member_path(directory, node_id, member)


class NodeMetrics(MemberPublisher):
    """One edge worker's publisher (member ``worker-<n>``) and its view of the node.

    ``refresh`` is called before this worker's own stats are read (the edge
    passes :meth:`EdgeStats.sync`).  ``data_dir`` (for the spool backlog and
    the disk's free space) defaults to the parent of ``directory``.
    """

    def __init__(self, directory: Path, node_id: str, worker: int,
                 refresh: Callable[[], None] | None = None, data_dir: Path | None = None) -> None:
        super().__init__(directory, node_id, f"worker-{worker}", 1.0, refresh=refresh)
        self.worker = worker
        self.view = NodeView(self.directory, node_id, data_dir if data_dir is not None else self.directory.parent,
                             self.member, self.own_document)

    def own_document(self) -> dict[str, Any]:
        return dict(super().own_document(), worker=self.worker)

    def status(self) -> dict[str, Any]:
        """The ``/status`` document."""
        return self.view.status()

    def prometheus(self) -> str:
        """The ``/metrics`` text."""
        return self.view.prometheus()
