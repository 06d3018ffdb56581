"""Supervision of the services of ``telemetry run``: restart what dies, give up on a crash loop.

:class:`ServiceSupervisor` watches every service (each processor worker,
the edge supervisor process, plugin services) from the ``telemetry run``
parent.  When a service's ``failed()`` reports a reason, the supervisor

1. logs the reason (which carries the exit status of a process),
2. calls ``stop()`` on it (to reap what is left of it),
3. restarts it with ``start()`` after a back-off that doubles from
   ``supervise.backoff_initial_s`` up to ``supervise.backoff_max_s`` while the
   service keeps dying quickly (reset once it has lived ``backoff_max_s``),
4. counts it under ``/services/<name>/restarts`` (and ``/services/<name>/up``,
   1 while the service runs, 0 while it waits to be restarted).

A service that needs ``supervise.crash_loop_restarts`` restarts within
``supervise.crash_loop_window_s`` seconds is in a crash loop: :meth:`watch`
returns the reason and the node exits with
:data:`~telemetry_core.commands.EXIT_CRASH_LOOP`.  A ``start()`` that raises
counts as one more death of the service.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from greplin import scales
from .redaction import redact

__all__ = ["RestartPolicy", "ServiceSupervisor", "describe_exit"]

log = logging.getLogger(__name__)

#: Seconds between two looks at the services.
POLL_S = 0.2


def describe_exit(code: int | None) -> str:
    """``code 1``, ``signal SIGKILL`` ...: a process's exit status as a person reads it
    (``subprocess``/``multiprocessing`` style: negative = killed by that signal)."""
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


@dataclass(frozen=True)
class RestartPolicy:
    """The ``supervise`` keys (see docs/operations/deploy.md)."""

    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    crash_loop_restarts: int = 5
    crash_loop_window_s: float = 60.0
    stop_timeout_s: float = 30.0

    @classmethod
    def from_config(cls, config: Any) -> "RestartPolicy":
        section = config["supervise"]
        return cls(**{name: section[name] for name in cls.__dataclass_fields__})


@dataclass
class _Unit:
    """One supervised service and its restart bookkeeping."""

    service: Any
    stats: Any
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None
    start_error: str | None = None
    restarts: collections.deque[float] = field(default_factory=collections.deque)


class ServiceSupervisor:
    """Starts services, restarts the ones that die, stops them in reverse order."""

    def __init__(self, services: list[Any], policy: RestartPolicy) -> None:
        self.policy = policy
        self.units = [_Unit(service, scales.collection(f"/services/{service.name}", scales.IntStat("restarts"),
                                                       scales.IntStat("up")))
                      for service in services]
        self._started: list[_Unit] = []

    def start(self) -> None:
        """Start every service in order; an exception stops the ones already started and propagates."""
        for unit in self.units:
            unit.service.start()
            unit.started_at = time.monotonic()
            unit.stats.up = 1
            self._started.append(unit)
            log.info("started %s", unit.service.name)

    def stop(self) -> None:
        """Stop the started services in reverse order (each may finish its in-flight work)."""
        for unit in reversed(self._started):
            if unit.restart_at is not None:  # died and was stopped; waiting to be restarted
                log.info("stopped %s (it was waiting to be restarted)", unit.service.name)
                continue
            try:
                unit.service.stop(timeout=self.policy.stop_timeout_s)
            except Exception as error:  # noqa: BLE001 - the others must still stop
                log.error("stopping %s failed: %s", unit.service.name, redact(error))
            unit.stats.up = 0
            log.info("stopped %s", unit.service.name)
        self._started = []

    def watch(self, stop: threading.Event, deadline: float | None = None) -> str | None:
        """Supervise until ``stop`` is set or ``deadline`` (monotonic) passes (``None``),
        or until a service is in a crash loop (the reason)."""
        while not stop.is_set():
            reason = self.check_once(time.monotonic())
            if reason:
                return reason
            if deadline is not None and time.monotonic() >= deadline:
                return None
            stop.wait(POLL_S)
        return None

    def check_once(self, now: float) -> str | None:
        """One round: reap failed services, restart those whose back-off is over."""
        for unit in self._started:
            if unit.restart_at is None:
                failure = unit.start_error or unit.service.failed()
                if failure:
                    reason = self._died(unit, redact(failure), now)
                    if reason:
                        return reason
            elif now >= unit.restart_at:
                self._restart(unit, now)
        return None

    def _died(self, unit: _Unit, failure: str, now: float) -> str | None:
        name = unit.service.name
        unit.stats.up = 0
        try:
            unit.service.stop(timeout=self.policy.stop_timeout_s)
        except Exception as error:  # noqa: BLE001 - reaping a dead service; restart anyway
            log.warning("cleaning up after %s failed: %s", name, redact(error))
        policy = self.policy
        window = unit.restarts
        while window and now - window[0] > policy.crash_loop_window_s:
            window.popleft()
        if len(window) >= policy.crash_loop_restarts:
            self._started.remove(unit)  # stopped already
            return (f"service {name} failed: {failure}; it was restarted {len(window)} times within "
                    f"{policy.crash_loop_window_s:g} s (supervise.crash_loop_restarts), giving up")
        lived = now - unit.started_at
        unit.quick_deaths = 0 if lived >= policy.backoff_max_s else unit.quick_deaths + 1
        delay = min(policy.backoff_initial_s * 2 ** max(unit.quick_deaths - 1, 0), policy.backoff_max_s)
        unit.restart_at = now + delay
        window.append(now)
        log.error("service %s failed after %.1f s: %s; restarting it in %.1f s", name, lived, failure, delay)
        return None

    def _restart(self, unit: _Unit, now: float) -> None:
        name = unit.service.name
        unit.restart_at, unit.start_error = None, None
        unit.started_at = now
        unit.stats.restarts += 1
        try:
            unit.service.start()
        except Exception as error:  # noqa: BLE001 - counted as one more death of the service
            unit.start_error = f"it could not start again: {redact(error)}"
            return
        unit.stats.up = 1
        log.info("restarted %s (restart %d)", name, unit.stats.restarts)
