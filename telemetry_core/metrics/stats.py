"""Metrics with ``scales``: one hook-call monitor, live percentiles, exporters.

* :class:`LatencyStat` is a scales stat whose percentiles are computed from
  the recorded samples when they are *read* (scales' own ``PmfStat``
  refreshes at most every 20 seconds and needs two samples, so it shows stale
  numbers).
* :class:`HookCallMonitor` is installed once per plugin manager by the engine
  (``pm.add_hookcall_monitoring``); it records, per hook, calls, errors and
  latency under ``/hooks/<hook>``.  Start times live on a ``contextvars``
  stack because hooks call hooks (and asyncio tasks interleave).  It also
  counts calls and errors per participating plugin under
  ``/plugins/<plugin>/<hook>``, attributing errors to the plugin that raised.
* Exporters: :func:`status_json` (the scales JSON status format),
  :func:`add_families` and :func:`render_families` (Prometheus text
  exposition 0.0.4, of one or several stats trees: ``/metrics`` and
  ``telemetry metrics --format prometheus``), :func:`flatten` (for Graphite)
  and snapshots written by one-shot commands for ``telemetry metrics``.
"""

from __future__ import annotations

import contextvars
import json
import math
import os
import re
import time
from collections import UserDict, deque
from pathlib import Path
from threading import get_ident
from typing import Any, Iterator

from greplin import scales

from .. import hookspecs
from ..atomic_files import write_json_atomically

HOOKS_PATH = "/hooks"
PLUGINS_PATH = "/plugins"
#: Quantiles reported for every latency, as (key in the scales dict, quantile).
QUANTILES = (("median", 0.5), ("75percentile", 0.75), ("95percentile", 0.95),
             ("99percentile", 0.99), ("999percentile", 0.999))
#: Number of most recent samples percentiles are computed from.
WINDOW = 1024


class LiveLatency(UserDict):
    """A latency distribution that scales displays like a ``PmfStat``.

    ``count``, ``sum``, ``min`` and ``max`` cover every sample; ``mean`` and
    the percentiles cover the last :data:`WINDOW` samples and are recomputed
    on read whenever samples were added since the last read.
    """

    def __init__(self, window: int = WINDOW) -> None:  # UserDict.__init__ would assign .data
        self._samples: deque[float] = deque(maxlen=window)
        self._count = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf
        self._cached: dict[str, float] | None = None

    def addValue(self, value: float) -> None:  # noqa: N802 - scales' naming
        self._samples.append(value)
        self._count += 1
        self._sum += value
        if value < self._min:
            self._min = value
        if value > self._max:
            self._max = value
        self._cached = None

    @property
    def data(self) -> dict[str, float]:  # type: ignore[override]
        if self._cached is None:
            self._cached = self._compute()
        return self._cached

    def _compute(self) -> dict[str, float]:
        out: dict[str, float] = {"count": self._count, "sum": self._sum}
        if not self._count:
            return out
        ordered = sorted(self._samples)
        out.update(min=self._min, max=self._max, mean=sum(ordered) / len(ordered))
        for key, quantile in QUANTILES:
            out[key] = percentile(ordered, quantile)
        return out


def percentile(ordered: list[float], quantile: float) -> float:
    """Linear-interpolated percentile of an ascending list (like numpy's default)."""
    if not ordered:
        return math.nan
    position = quantile * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class LatencyStat(scales.Stat):
    """Scales stat holding a :class:`LiveLatency`; assigning a number records a sample."""

    def __init__(self, name: str) -> None:
        super().__init__(name, None)

    def _getDefault(self, _instance: Any) -> LiveLatency:  # noqa: N802 - scales' naming
        return LiveLatency()

    def __set__(self, instance: Any, value: float) -> None:
        self.__get__(instance, None).addValue(value)


class Count:
    """A mutable integer that scales shows as a number (its encoder calls callables).

    Hot paths keep a reference and add to :attr:`value` directly: about
    twenty times cheaper than ``collection.name += 1`` through a scales
    descriptor, which matters on every hook call.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def __call__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"Count({self.value})"


class CountStat(scales.Stat):
    """Scales stat holding a :class:`Count`."""

    def __init__(self, name: str) -> None:
        super().__init__(name, None)

    def _getDefault(self, _instance: Any) -> Count:  # noqa: N802 - scales' naming
        return Count()


class CallStats:
    """``calls``, ``errors`` and ``latency`` of something called often (a hook, a plugin's
    implementation), in scales at ``path``; :meth:`record` is the cheap way to add a call."""

    __slots__ = ("collection", "calls", "errors", "latency")

    def __init__(self, path: str) -> None:
        self.collection = scales.collection(path, CountStat("calls"), CountStat("errors"), LatencyStat("latency"))
        self.calls: Count = self.collection.calls
        self.errors: Count = self.collection.errors
        self.latency: LiveLatency = self.collection.latency

    def record(self, elapsed: float, failed: bool = False) -> None:
        self.calls.value += 1
        self.latency.addValue(elapsed)
        if failed:
            self.errors.value += 1


def call_stats(path: str) -> CallStats:
    """:class:`CallStats` at ``path``: ``calls``, ``errors`` and ``latency``."""
    return CallStats(path)


def plugin_call_stats(path: str) -> Any:
    """A scales collection of ``calls`` and ``errors`` :class:`Count` s (one plugin's implementation of a hook)."""
    return scales.collection(path, CountStat("calls"), CountStat("errors"))


def counter_stats(path: str, *names: str) -> Any:
    """A scales collection of integer counters (for stages to count things)."""
    return scales.collection(path, *(scales.IntStat(name) for name in names))


class HookCallMonitor:
    """Records calls, errors and latency of every hook call into scales, and
    calls and errors of every participating plugin's implementation.

    Per hook, under ``/hooks/<hook>``: ``calls``, ``errors`` and ``latency``.
    Per plugin, under ``/plugins/<plugin>/<hook>``: ``calls`` and ``errors``,
    worked out after the call from what pluggy hands every monitor (the
    implementations, in call order, and the outcome); see :class:`_PluginCalls`.
    Per-plugin latency is not measured: pluggy has no per-implementation
    callback, and wrapping ``HookImpl.function`` (declared ``Final``) is not
    supported (docs/metrics.md gives the measurements).
    """

    def __init__(self) -> None:
        # One list of start times per context and thread, pushed and popped in place
        # (cheaper than a new tuple per call).  Its first item is the owning thread's
        # id: a context copied into another thread (asyncio.to_thread) gets a list of
        # its own there.  Within a thread, tasks may share a list: a hook's
        # implementations are plain functions, so a push and its pop never straddle
        # an ``await``.
        self._starts: contextvars.ContextVar[list[float]] = contextvars.ContextVar("telemetry_hook_starts")
        self._stats: dict[str, Any] = {}
        self._plugins: dict[str, _PluginCalls] = {}

    def stats_for(self, hook_name: str) -> CallStats:
        stats = self._stats.get(hook_name)
        if stats is None:
            stats = self._stats[hook_name] = call_stats(f"{HOOKS_PATH}/{hook_name}")
        return stats

    def before(self, hook_name: str, hook_impls: list[Any], kwargs: dict[str, Any]) -> None:
        starts = self._starts.get(None)
        if starts is None or starts[0] != get_ident():
            starts = [get_ident()]
            self._starts.set(starts)
        starts.append(time.perf_counter())

    def after(self, outcome: Any, hook_name: str, hook_impls: list[Any], kwargs: dict[str, Any]) -> None:
        elapsed = time.perf_counter() - self._starts.get().pop()
        exception = outcome.exception
        plugins = self._plugins.get(hook_name)
        if plugins is None or plugins.impls != hook_impls:
            plugins = self._plugins[hook_name] = _PluginCalls(hook_name, hook_impls, self.stats_for(hook_name))
        plugins.hook.record(elapsed, exception is not None)
        if exception is not None:
            plugins.failed(exception)
        elif plugins.ambiguous and outcome.get_result() is not None:
            plugins.calls[0].value += 1  # only the first candidate is known to have run
        else:
            for count in plugins.calls:
                count.value += 1


class _PluginCalls:
    """Per-plugin counters of one hook, for one set of implementations.

    pluggy calls the plain (non-wrapper) implementations in reverse list
    order; a fan-out hook runs every one of them, a "pick one" hook stops at
    the first non-None answer, and an exception stops the call.  So:

    * a call that succeeded counts a call for every implementation, except
      when a "pick one" hook with several candidates got an answer: pluggy
      does not say which candidate answered, so only the first one, which
      certainly ran, counts a call;
    * a call that raised is attributed to the implementation of this hook whose
      frame is the deepest in the traceback (frames of other hooks'
      implementations are not looked at, so a plugin that called another hook
      that raised is charged here, and that hook's plugin there); it and every
      implementation called before it count a call, it counts an error.  When
      several registered instances share one method, the frame's ``self``
      tells them apart.  An exception from a wrapper or from pluggy itself is
      counted per hook only.
    """

    __slots__ = ("hook", "impls", "calls", "errors", "owners", "ambiguous")

    def __init__(self, hook_name: str, hook_impls: list[Any], hook: CallStats) -> None:
        self.hook = hook  # the hook's own stats, kept here to save a look-up per call
        self.impls = list(hook_impls)
        in_call_order = [impl for impl in reversed(self.impls) if not (impl.wrapper or impl.hookwrapper)]
        stats = [plugin_call_stats(f"{PLUGINS_PATH}/{impl.plugin_name}/{hook_name}") for impl in in_call_order]
        self.calls: list[Count] = [s.calls for s in stats]
        self.errors: list[Count] = [s.errors for s in stats]
        #: code object -> [(the bound ``self`` or None, position in call order)]
        self.owners: dict[Any, list[tuple[Any, int]]] = {}
        for position, impl in enumerate(in_call_order):
            function = impl.function
            code = getattr(getattr(function, "__func__", function), "__code__", None)
            self.owners.setdefault(code, []).append((getattr(function, "__self__", None), position))
        self.ambiguous = len(in_call_order) > 1 and is_first_result(hook_name)

    def failed(self, exception: BaseException) -> None:
        raiser = None
        tb = exception.__traceback__
        while tb is not None:
            owners = self.owners.get(tb.tb_frame.f_code)
            if owners is not None:
                raiser = _owner_position(owners, tb.tb_frame)
            tb = tb.tb_next
        if raiser is None:
            return
        self.errors[raiser].value += 1
        for count in self.calls[:raiser + 1]:
            count.value += 1


def is_first_result(hook_name: str) -> bool:
    """Whether ``hook_name`` is a "pick one" (``firstresult``) hook of :mod:`telemetry_core.hookspecs`."""
    spec = getattr(getattr(hookspecs, hook_name, None), f"{hookspecs.PROJECT_NAME}_spec", None)
    return bool(spec and spec.get("firstresult"))


def _owner_position(owners: list[tuple[Any, int]], frame: Any) -> int:
    """Which of the implementations sharing ``frame``'s code ran in it (the first one if unsure)."""
    if len(owners) > 1:
        bound = frame.f_locals.get("self")
        for owner, position in owners:
            if owner is bound:
                return position
    return owners[0][1]


# --------------------------------------------------------------------------- exporters


def snapshot() -> dict[str, Any]:
    """A plain-dict copy of every scales stat (callables evaluated)."""
    return json.loads(status_json())


def status_json(pretty: bool = False) -> str:
    """Every stat in the scales JSON status format (what ``/status`` serves)."""
    return json.dumps(scales.getStats(), cls=scales.StatContainerEncoder, indent=2 if pretty else None,
                      sort_keys=True)


def flatten(tree: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], float]]:
    """Yield ``(path parts, number)`` for every numeric leaf of a stats tree."""
    if isinstance(tree, (dict, UserDict)):
        for key in sorted(tree.keys(), key=str):
            yield from flatten(tree[key], prefix + (str(key),))
    elif callable(tree):
        yield from flatten(tree(), prefix)
    elif isinstance(tree, bool):
        yield prefix, float(tree)
    elif isinstance(tree, (int, float)) and math.isfinite(tree):
        yield prefix, float(tree)


_METRIC_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(parts: tuple[str, ...]) -> str:
    name = "_".join(_METRIC_NAME.sub("_", part) for part in parts if part)
    name = re.sub(r"_+", "_", name).strip("_")
    return f"telemetry_{name}"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Family:
    """One metric family: its type, help line and samples ``(name, labels, value)``."""

    def __init__(self, kind: str, help_text: str) -> None:
        self.kind = kind
        self.help = help_text
        self.samples: list[tuple[str, dict[str, str], float]] = []


def add_families(families: dict[str, Family], tree: dict[str, Any], labels: dict[str, str]) -> None:
    """Add the samples of one stats tree to ``families`` (several trees may share families).

    Hook metrics become ``telemetry_hook_calls_total``,
    ``telemetry_hook_errors_total`` and the summary
    ``telemetry_hook_latency_seconds`` labelled by ``hook``; per plugin,
    ``telemetry_plugin_hook_calls_total`` and ``telemetry_plugin_hook_errors_total``
    labelled by ``plugin`` and ``hook``; every other numeric stat becomes an
    untyped sample named after its path.  ``labels`` are added to every sample.
    """
    hooks = tree.get(HOOKS_PATH.strip("/"), {})
    plugins = tree.get(PLUGINS_PATH.strip("/"), {})
    _call_families(families, "telemetry_hook",
                   [({**labels, "hook": hook}, stats) for hook, stats in sorted(hooks.items())])
    _call_families(families, "telemetry_plugin_hook",
                   [({**labels, "plugin": plugin, "hook": hook}, stats)
                    for plugin, by_hook in sorted(plugins.items()) for hook, stats in sorted(by_hook.items())])
    for key in sorted(tree):
        if key in (HOOKS_PATH.strip("/"), PLUGINS_PATH.strip("/")):
            continue
        for parts, value in flatten(tree[key], (key,)):
            name = _metric_name(parts)
            families.setdefault(name, Family("untyped", "/".join(parts))).samples.append((name, labels, value))


def render_families(families: dict[str, Family]) -> str:
    lines: list[str] = []
    for name, family in families.items():
        lines.append(f"# HELP {name} {family.help}")
        lines.append(f"# TYPE {name} {family.kind}")
        for sample, labels, value in family.samples:
            rendered = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"{sample}{{{rendered}}} {_number(value)}" if rendered else f"{sample} {_number(value)}")
    return "\n".join(lines) + "\n"


def _call_families(families: dict[str, Family], family: str,
                   entries: list[tuple[dict[str, str], dict[str, Any]]]) -> None:
    if not entries:
        return
    calls = families.setdefault(f"{family}_calls_total", Family("counter", "Hook calls, including failed ones."))
    errors = families.setdefault(f"{family}_errors_total", Family("counter", "Hook calls that raised."))
    latency_family = Family("summary", f"Hook call latency in seconds (quantiles over the last {WINDOW} calls).")
    for labels, stats in entries:
        calls.samples.append((f"{family}_calls_total", labels, stats.get("calls", 0)))
        errors.samples.append((f"{family}_errors_total", labels, stats.get("errors", 0)))
        distribution = stats.get("latency")
        if distribution is None:  # per-plugin stats count calls and errors only
            continue
        latency = families.setdefault(f"{family}_latency_seconds", latency_family)
        for key, quantile in QUANTILES:
            if key in distribution:
                latency.samples.append((f"{family}_latency_seconds", {**labels, "quantile": str(quantile)},
                                        distribution[key]))
        latency.samples.append((f"{family}_latency_seconds_sum", labels, distribution.get("sum", 0)))
        latency.samples.append((f"{family}_latency_seconds_count", labels, distribution.get("count", 0)))


def write_snapshot(directory: Path, command: str) -> Path:
    """Atomically write the current stats to ``<directory>/<command>.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', command)}.json"
    document = {"command": command, "written_at": time.time(), "pid": os.getpid(), "stats": snapshot()}
    write_json_atomically(target, document)
    return target


def read_snapshots(directory: Path) -> list[dict[str, Any]]:
    """Every snapshot in ``directory``, oldest first; unreadable files are skipped with a note."""
    documents = []
    for path in sorted(directory.glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            documents.append({"command": path.stem, "error": f"unreadable snapshot {path}: {exc}"})
            continue
        if isinstance(document, dict) and isinstance(document.get("stats"), dict):
            documents.append(document)
        else:
            documents.append({"command": path.stem, "error": f"{path} is not a metrics snapshot"})
    return sorted(documents, key=lambda d: d.get("written_at", 0))
