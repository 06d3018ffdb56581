"""One node, one view: every process of a node publishes its stats, any process reads them all.

``scales`` stats live in one process, and a node is several: edge workers,
the edge supervisor, processor workers, the ``telemetry run`` parent (and
the plugin services it runs).  Each of them is a **member** with a stable
name (``worker-<n>``, ``supervisor``, ``processor-<n>``, ``run``) and
publishes a snapshot of its stats to
``<data_dir>/metrics/node.<node_id>.<member>.json`` every
``metrics.node_interval_s`` (edge workers every
``receive.metrics_interval_s``) and when it stops.  Whoever serves
``/status``, ``/metrics`` or the dashboard reads every member's file
(:func:`read_members`) and uses its own live stats for itself.

**Restarts**: a member started again under the same name (a restarted edge
or processor worker) first folds its dead predecessor's last snapshot into
``node.<node_id>.<member>.retired.json`` (:meth:`MemberPublisher.retire_predecessor`),
so the member's counters go on from where the predecessor stopped instead
of dropping to zero; a file whose pid is gone is otherwise left out.  What
a killed process counted after its last snapshot is lost (at most one
interval).  ``telemetry run`` and ``telemetry serve`` remove the files of an
earlier run when they start (:func:`clear_members`).

The files have the layout of command snapshots, so ``telemetry metrics``
lists them too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ..atomic_files import write_json_atomically
from ..store.spool.files import process_alive
from .stats import snapshot

__all__ = ["MemberPublisher", "clear_members", "fold_trees", "member_path", "member_process", "merge_trees",
           "read_members", "retired_path"]

log = logging.getLogger(__name__)

PREFIX = "node"
RETIRED = "retired"
#: Keys of a latency distribution that cannot be added up across processes.
_COMBINED = {"min": min, "max": max}
_DROPPED = {"mean", "median", "75percentile", "95percentile", "99percentile", "999percentile"}


def member_path(directory: Path, node_id: str, member: str) -> Path:
    """The file ``member`` of node ``node_id`` publishes its stats to."""
    return Path(directory) / f"{PREFIX}.{node_id}.{member}.json"


def retired_path(directory: Path, node_id: str, member: str) -> Path:
    """The file holding the summed final stats of ``member``'s dead predecessors."""
    return Path(directory) / f"{PREFIX}.{node_id}.{member}.{RETIRED}.json"


def write_document(path: Path, document: dict[str, Any]) -> None:
    """Atomically replace ``path`` with ``document`` as JSON (not synced: metrics, not data)."""
    write_json_atomically(path, document, durable=False)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # gone, or being replaced right now: the next read sees it
    return document if isinstance(document, dict) else None


def pid_alive(pid: Any) -> bool:
    return isinstance(pid, int) and not isinstance(pid, bool) and process_alive(pid)


def clear_members(directory: Path, node_id: str, pattern: str = "*") -> None:
    """Remove the files of members matching ``pattern`` (a glob) left by an earlier run."""
    for path in Path(directory).glob(f"{PREFIX}.{node_id}.{pattern}.json"):
        path.unlink(missing_ok=True)


def read_members(directory: Path, node_id: str) -> dict[str, dict[str, Any]]:
    """Every live member's latest document by member name, its predecessors' counts folded in.

    A document whose pid is gone is left out (its counts live on in the
    ``retired`` file once a successor starts).  Each document gets
    ``retired`` (the predecessors' summed stats, or ``None``) and ``stats``
    becomes the member's whole count since the node started.
    """
    members: dict[str, dict[str, Any]] = {}
    retired: dict[str, dict[str, Any]] = {}
    prefix = f"{PREFIX}.{node_id}."
    for path in sorted(Path(directory).glob(f"{prefix}*.json")):
        name = path.stem[len(prefix):]
        document = _read(path)
        if document is None:
            continue
        if name.endswith(f".{RETIRED}"):
            retired[name[:-len(RETIRED) - 1]] = document
        elif pid_alive(document.get("pid")):
            members[name] = document
    for name, document in members.items():
        predecessors = retired.get(name)
        if predecessors is not None and predecessors.get("successor_pid") == document.get("pid"):
            document["restarts"] = predecessors.get("restarts", 0)
            document["stats"] = fold_trees(document.get("stats", {}), predecessors.get("stats", {}))
    return members


class MemberPublisher:
    """Publishes one process's stats as member ``member`` of node ``node_id``.

    :meth:`publish` writes now; :meth:`start` publishes every ``interval``
    seconds from a daemon thread until :meth:`stop` (which publishes once
    more).  ``extra`` returns more top-level keys for the document (the
    ``run`` member adds its throughput history).
    """

    def __init__(self, directory: Path, node_id: str, member: str, interval: float, *,
                 refresh: Callable[[], None] | None = None,
                 extra: Callable[[], dict[str, Any]] | None = None) -> None:
        self.directory = Path(directory)
        self.node_id = node_id
        self.member = member
        self.interval = interval
        self.refresh = refresh
        self.extra = extra
        self.path = member_path(self.directory, node_id, member)
        self.started_at = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False

    def own_document(self) -> dict[str, Any]:
        """This process's live stats as a snapshot document."""
        if self.refresh is not None:
            self.refresh()
        document = {"command": self.path.stem, "node_id": self.node_id, "member": self.member,
                    "pid": os.getpid(), "started_at": self.started_at, "written_at": time.time(),
                    "stats": snapshot()}
        if self.extra is not None:
            document.update(self.extra())
        return document

    def retire_predecessor(self) -> None:
        """Fold a dead predecessor's last counts (and its own predecessors') into the retired file."""
        self.directory.mkdir(parents=True, exist_ok=True)
        previous = _read(self.path)
        if previous is None or previous.get("pid") == os.getpid() or pid_alive(previous.get("pid")):
            return
        target = retired_path(self.directory, self.node_id, self.member)
        retired = _read(target) or {}
        stats = merge_trees([previous.get("stats", {})])  # its percentiles are stale: counts only
        restarts = 1
        if retired.get("successor_pid") == previous.get("pid"):  # the predecessor was a successor too
            stats = merge_trees([stats, retired.get("stats", {})])
            restarts += int(retired.get("restarts", 0))
        write_document(target, {"command": target.stem, "node_id": self.node_id, "member": self.member,
                                "pid": previous.get("pid"), "successor_pid": os.getpid(), "restarts": restarts,
                                "written_at": time.time(), "stats": stats})
        self.path.unlink(missing_ok=True)

    def publish(self, document: dict[str, Any] | None = None) -> None:
        """Write this member's snapshot (``document`` taken earlier, or now); a failure is logged once."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_document(self.path, document if document is not None else self.own_document())
        except OSError as error:
            if not self._failed:
                log.warning("cannot publish the metrics of %s to %s: %s; /status leaves it out",
                            self.member, self.path, error)
            self._failed = True
        else:
            self._failed = False

    def start(self) -> "MemberPublisher":
        try:
            self.retire_predecessor()
        except OSError as error:
            log.warning("cannot keep the counts of %s's predecessor: %s", self.member, error)
        self.publish()
        self._thread = threading.Thread(target=self._run, name=f"metrics-{self.member}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.publish()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.publish()


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


def fold_trees(live: Any, retired: Any) -> Any:
    """``live`` with ``retired``'s counts added: like :func:`merge_trees`, but the live
    percentiles and means are kept (they describe the recent calls, which are the live process's)."""
    if isinstance(live, dict) and isinstance(retired, dict):
        folded: dict[str, Any] = {}
        for key in sorted(set(live) | set(retired), key=str):
            if key in _DROPPED:
                if key in live:
                    folded[key] = live[key]
            elif key not in retired:
                folded[key] = live[key]
            elif key not in live:
                folded[key] = retired[key]
            elif key in _COMBINED and _is_number(live[key]) and _is_number(retired[key]):
                folded[key] = _COMBINED[key](live[key], retired[key])
            else:
                folded[key] = fold_trees(live[key], retired[key])
        return folded
    if _is_number(live) and _is_number(retired):
        return live + retired
    return live


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@contextlib.contextmanager
def member_process(engine: Any, member: str, command: str) -> Iterator[MemberPublisher]:
    """Run the block as node member ``member`` of a process the node started (a processor worker ...).

    Names the process for per-process exporters (``engine.process_label``),
    profiles it when the node is profiled (:mod:`telemetry_core.profiling`),
    calls ``telemetry_startup`` (Graphite starts pushing) and publishes its
    stats every ``metrics.node_interval_s`` until the block ends; then
    ``telemetry_shutdown``.
    """
    from ..profiling import profiled

    engine.process_label = member
    publisher = MemberPublisher(engine.config.data_dir / "metrics", engine.node_id, member,
                                float(engine.config.get("metrics.node_interval_s")))
    with profiled(member):
        engine.startup(command=command)
        publisher.start()
        try:
            yield publisher
        finally:
            publisher.stop()
            engine.shutdown(command=command)
