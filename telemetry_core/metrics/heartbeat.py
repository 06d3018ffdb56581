"""The ``telemetry run`` parent's part in the node view: its stats, the throughput history, a heartbeat.

:class:`NodeMonitor` runs in the parent of ``telemetry run`` from before the
services start until after they stopped.  It

* removes the node's member files of an earlier run, then publishes the
  parent's own stats as member ``run`` every ``metrics.node_interval_s``
  (the parent holds the edge supervisor and every plugin service that runs
  in-process, so their counters are part of the node);
* samples the node's headline totals every :data:`SAMPLE_S` seconds and
  keeps the last :data:`HISTORY_SAMPLES` in the ``run`` document
  (``history``): the dashboard draws throughput over the last minutes from
  them;
* logs a one-line heartbeat every ``metrics.heartbeat_s`` seconds (0 = off):
  accepted/s, processed/s, quarantined/s and published files since the last
  line, and the spool backlog with the age of its oldest file.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .node import MemberPublisher, clear_members
from .node_view import NodeView, spool_backlog, totals

__all__ = ["HISTORY_SAMPLES", "NodeMonitor", "SAMPLE_S"]

log = logging.getLogger("telemetry_core.run")

SAMPLE_S = 5.0
HISTORY_SAMPLES = 180  # 15 minutes


class NodeMonitor:
    """See the module docstring; ``start`` before the services, ``stop`` after them."""

    def __init__(self, engine: Any, *, sample_s: float = SAMPLE_S) -> None:
        config = engine.config
        self.node_id = engine.node_id
        self.data_dir = config.data_dir
        self.directory = config.data_dir / "metrics"
        self.interval = float(config.get("metrics.node_interval_s"))
        self.heartbeat_s = float(config.get("metrics.heartbeat_s"))
        self.sample_s = sample_s
        self.history: list[dict[str, Any]] = []
        self.publisher = MemberPublisher(self.directory, self.node_id, "run", self.interval,
                                         extra=lambda: {"history": list(self.history)})
        self.view = NodeView(self.directory, self.node_id, self.data_dir, "run", self.publisher.own_document)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_beat: tuple[float, dict[str, int]] | None = None

    def start(self) -> "NodeMonitor":
        clear_members(self.directory, self.node_id)
        self._last_beat = (time.monotonic(), self.sample()["totals"])
        self.publisher.publish()
        self._thread = threading.Thread(target=self._run, name="node-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        self.sample()
        self.publisher.publish()

    def sample(self) -> dict[str, Any]:
        """Add the node's current totals (and rejections by reason) to the history."""
        node = self.view.status()["node"]
        point = {"t": round(time.time(), 3), "totals": totals(node),
                 "rejected": dict(node.get("edge", {}).get("rejected", {}) or {})}
        self.history.append(point)
        del self.history[:-HISTORY_SAMPLES]
        return point

    def heartbeat(self) -> str:
        """The heartbeat line for the time since the last one (also logged at INFO)."""
        now = time.monotonic()
        current = totals(self.view.status()["node"])
        since, before = self._last_beat or (now, current)
        elapsed = max(now - since, 1e-9)
        self._last_beat = (now, current)

        def rate(name: str) -> float:
            return (current.get(name, 0) - before.get(name, 0)) / elapsed

        backlog = spool_backlog(self.data_dir)
        line = (f"node {self.node_id}: accepted {rate('accepted'):.1f}/s, processed {rate('processed'):.1f}/s, "
                f"quarantined {rate('quarantined'):.1f}/s, published "
                f"{current.get('published', 0) - before.get('published', 0)} files in {elapsed:.0f} s; "
                f"backlog {backlog['files']} spool files, oldest {backlog['oldest_age_s']:.1f} s")
        log.info("%s", line)
        return line

    def _run(self) -> None:
        next_sample = time.monotonic() + self.sample_s
        next_beat = time.monotonic() + self.heartbeat_s if self.heartbeat_s > 0 else None
        while not self._stop.wait(self.interval):
            try:
                now = time.monotonic()
                if now >= next_sample:
                    next_sample = now + self.sample_s
                    self.sample()
                if next_beat is not None and now >= next_beat:
                    next_beat = now + self.heartbeat_s
                    self.heartbeat()
                self.publisher.publish()
            except Exception:  # noqa: BLE001 - observing must never stop the node; say what broke
                log.exception("the node monitor failed a round; trying again")
