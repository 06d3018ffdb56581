"""Cost of one hook call: bare pluggy against the ways of measuring it.

Run from the repository root::

    .venv/bin/python benchmarks/hook_calls.py [--calls 200000] [--repeat 5]

Each row calls one hook through ``pm.hook`` in a loop, with trivial
implementations (so the figures are the measuring overhead, not the work):

* ``bare pluggy``: a plugin manager with the hook specs and nothing else;
* ``per-hook monitor``: ``add_hookcall_monitoring`` recording calls, errors
  and latency under ``/hooks/<hook>`` only (the monitor as it was before it
  counted per plugin);
* ``+ wrapped impls (old)``: that monitor plus the per-plugin timing that was
  removed: every ``HookImpl.function`` replaced by a timing closure (calls,
  errors, latency under ``/plugins/<plugin>/<hook>``);
* ``HookCallMonitor (now)``: the monitor the engine installs: per hook calls,
  errors, latency; per plugin calls and errors, worked out in ``after``.

Hooks: a fan-out hook with one and with three implementations, and a "pick
one" hook with two candidates where the first answers. Times are the best of
``--repeat`` rounds (each round runs every setup in turn), in microseconds per
hook call; ratios are against bare pluggy in the same run. This is not a test: nothing passes or fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from greplin import scales  # noqa: E402

from telemetry_core import hookimpl  # noqa: E402
from telemetry_core.metrics.stats import HookCallMonitor, call_stats  # noqa: E402
from telemetry_core.plugins import make_plugin_manager  # noqa: E402
from telemetry_core.records import Rejection, Submission  # noqa: E402

import pluggy  # noqa: E402

from telemetry_core import hookspecs  # noqa: E402


class Validator:
    @hookimpl
    def telemetry_receive_validate(self, submission: Submission) -> None:
        return None


class Paths:
    def __init__(self, answer: Rejection | None) -> None:
        self.answer = answer

    @hookimpl
    def telemetry_receive_parse_path(self, path: str) -> Rejection | None:
        return self.answer


class PerHookMonitor(HookCallMonitor):
    """The monitor without its per-plugin counting: per-hook figures only."""

    def after(self, outcome: Any, hook_name: str, hook_impls: list[Any], kwargs: dict[str, Any]) -> None:
        elapsed = time.perf_counter() - self._starts.get().pop()
        (self._stats.get(hook_name) or self.stats_for(hook_name)).record(elapsed, outcome.exception is not None)


def wrap_impls(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """The removed per-plugin timing (metrics.stats.time_plugin_hooks), kept here as the baseline."""
    for caller in pm.get_hookcallers(plugin) or ():
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper):
                impl.function = timed(impl.function, f"/plugins/{name}/{caller.name}")  # type: ignore[misc]


def timed(function: Callable[..., Any], path: str) -> Callable[..., Any]:
    stats = call_stats(path)
    calls, errors, latency = stats.calls, stats.errors, stats.latency
    clock = time.perf_counter

    def timed_hookimpl(*args: Any) -> Any:
        start = clock()
        try:
            return function(*args)
        except BaseException:
            errors.value += 1
            raise
        finally:
            calls.value += 1
            latency.addValue(clock() - start)

    return timed_hookimpl


def manager(setup: str, plugins: list[Any]) -> pluggy.PluginManager:
    if setup == "bare":
        pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
    elif setup == "now":
        pm = make_plugin_manager(HookCallMonitor())
    else:
        pm = make_plugin_manager(PerHookMonitor())
    for number, plugin in enumerate(plugins):
        pm.register(plugin, name=f"plugin{number}")
        if setup == "wrapped":
            wrap_impls(pm, plugin, f"plugin{number}")
    return pm


def best_per_call(calls_by_setup: dict[str, Callable[[], Any]], calls: int, repeat: int) -> dict[str, float]:
    """Seconds per call of each setup, best of ``repeat`` rounds; a round runs every setup in turn,
    so drift on a shared machine hits them alike."""
    best = {setup: float("inf") for setup in calls_by_setup}
    for _ in range(repeat):
        for setup, call in calls_by_setup.items():
            start = time.perf_counter()
            for _ in range(calls):
                call()
            best[setup] = min(best[setup], (time.perf_counter() - start) / calls)
    return best


SETUPS = (("bare", "bare pluggy"), ("monitor", "per-hook monitor"), ("wrapped", "+ wrapped impls (old)"),
          ("now", "HookCallMonitor (now)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    submission = Submission(id="i", path="p", body=b"", received_at_ms=0, dims={})
    cases = (
        ("fan-out, 1 impl", lambda: [Validator()],
         lambda pm: lambda: pm.hook.telemetry_receive_validate(submission=submission)),
        ("fan-out, 3 impls", lambda: [Validator(), Validator(), Validator()],
         lambda pm: lambda: pm.hook.telemetry_receive_validate(submission=submission)),
        ("pick one, 2 candidates", lambda: [Paths(None), Paths(Rejection(404, "x", "y"))],
         lambda pm: lambda: pm.hook.telemetry_receive_parse_path(path="/x")),
    )
    print(f"{'hook':24} {'setup':24} {'us/call':>8} {'x bare':>7}")
    for case, plugins, make_call in cases:
        scales.reset()
        seconds = best_per_call({setup: make_call(manager(setup, plugins())) for setup, _ in SETUPS},
                                args.calls, args.repeat)
        for setup, label in SETUPS:
            print(f"{case:24} {label:24} {seconds[setup] * 1e6:8.2f} {seconds[setup] / seconds['bare']:7.2f}")

if __name__ == "__main__":
    main()
