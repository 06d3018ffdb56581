"""Building the plugin manager and loading plugins, in a fixed, explicit order.

1. names listed in ``plugins.disabled`` are blocked (never imported);
2. third-party plugins are loaded from the ``telemetry`` entry-point group;
3. the built-in plugins (:data:`DEFAULT_PLUGINS`) are registered under their
   short, stable names (``receive.paths``, ``compress.codecs`` ...); a class
   is instantiated and the instance registered (its state is per engine);
4. modules listed in ``plugins.load`` (importable names or ``.py`` paths)
   are registered;
5. ``check_pending()`` rejects implementations of hooks that do not exist;
6. an essential built-in (:data:`ESSENTIAL_PLUGINS`) named in ``plugins.disabled``
   is refused unless another loaded plugin implements its hooks.

Hook implementations are called in reverse registration order, so for a
"pick one" hook a third-party plugin wins only because the built-in
fallbacks are ``trylast=True``; see ``docs/writing-plugins.md``.

Nothing here runs at import time.  A plugin that fails to import, register
or validate raises :class:`~telemetry_core.errors.PluginLoadError` naming the
plugin and its distribution, unless ``skip_broken`` is set, in which case
it is logged, counted (``/plugins_loading/broken``) and listed as broken.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import pluggy

from . import __version__, hookspecs
from .errors import ConfigError, PluginLoadError
from .metrics.stats import HookCallMonitor, counter_stats

log = logging.getLogger(__name__)

#: Built-in plugins: ``(name, module)`` or ``(name, "module:Class")``.  A
#: class is instantiated (no arguments) and the instance registered: that is
#: where a stateful built-in keeps its state, one per engine.  The names are
#: stable and short (``<stage>.<what>``); they are what ``plugins.disabled``,
#: ``telemetry plugins`` and the per-plugin metrics use (docs/writing-plugins.md).
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("compress.codecs", "telemetry_core.compress.codecs_builtin"),
    ("compress.lzma", "telemetry_core.compress.lzma_alone"),
    ("metrics.graphite", "telemetry_core.metrics.graphite:GraphitePlugin"),
    ("convert.histograms", "telemetry_core.convert.stage:ConvertStage"),
    ("store.layout", "telemetry_core.store.layout"),
    ("store.local", "telemetry_core.store.local"),
    ("store.s3", "telemetry_core.store.s3.publisher:S3Plugin"),
    ("store.s3_policy", "telemetry_core.store.s3.policy"),
    ("store.spool", "telemetry_core.store.spool.writer_plugin"),
    ("store.process", "telemetry_core.store.process.commands"),
    ("store.replay", "telemetry_core.store.process.replay"),
    ("ops.retention", "telemetry_core.ops.retention"),
    ("ops.doctor", "telemetry_core.ops.doctor"),
    ("receive.paths", "telemetry_core.receive.paths"),
    ("receive.bodies", "telemetry_core.receive.bodies:BodyLimits"),
    ("receive.client_addr", "telemetry_core.receive.client_addr:ClientAddresses"),
    ("receive.edge", "telemetry_core.receive.service"),
    ("dedup.key", "telemetry_core.dedup.rules"),
    ("dedup.sqlite", "telemetry_core.dedup.sqlite_backend"),
    ("dedup.redis", "telemetry_core.dedup.redis_backend"),
    ("dedup.ledger", "telemetry_core.dedup.ledger"),
    ("dedup.check", "telemetry_core.dedup.check"),
    ("reduce.inputs", "telemetry_core.reduce.inputs"),
    ("reduce.histograms", "telemetry_core.reduce.histograms"),
    ("reduce.local", "telemetry_core.reduce.local"),
    ("reduce.spark", "telemetry_core.reduce.spark"),
    ("reduce.command", "telemetry_core.reduce.command"),
)

#: The commands the built-in plugins add (``telemetry_register_commands``):
#: ``command -> (plugin, one-line help)``.  ``telemetry --help`` lists them from
#: here, so listing imports no built-in plugin; a built-in is imported when
#: one of its commands is looked up to run it
#: (:meth:`~telemetry_core.engine.Engine.add_builtin_commands`).
#: A test checks this table against what the plugins register.
BUILTIN_COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("receive.edge", "Benchmarks and load generators."),
    "convert": ("convert.histograms", "Convert classic payloads to v2 lines on stdout."),
    "dedup": ("dedup.check", "De-duplication of idle-daily and saved-session pings (docs/dedup.md)."),
    "doctor": ("ops.doctor", "Check this node's health: config, disk, spool backlog, clock, S3, Redis, "
                             "Histograms.json, Spark."),
    "histograms": ("convert.histograms", "Inspect Histograms.json revisions."),
    "mapreduce": ("reduce.command", "Run a MapReduce job over stored telemetry (docs/mapreduce.md)."),
    "policy": ("store.s3_policy", "The S3 archive's data access policy: lifecycle, bucket policy, encryption."),
    "process": ("store.process", "Process spool files into compressed, published, partitioned files."),
    "reconcile": ("store.process", "Prove every acknowledged submission is published, quarantined with a "
                                   "reason, or parked."),
    "replay": ("store.replay", "Send quarantined records (_invalid/) through the processor again, once the "
                               "cause is fixed."),
    "report": ("reduce.command", "Draw a histogram MapReduce job's output as bar charts, one per histogram, "
                                 "in one HTML page."),
    "retention": ("ops.retention", "Retention of local data (the S3 side is telemetry policy apply)."),
    "serve": ("receive.edge", "Run only the HTTP edge until SIGTERM/SIGINT."),
}

#: Built-ins a node cannot work without, and the hooks a replacement must
#: implement before one of them may be named in ``plugins.disabled``.
ESSENTIAL_PLUGINS: dict[str, tuple[str, ...]] = {
    "receive.paths": ("telemetry_receive_parse_path",),
    "store.layout": ("telemetry_store_partition", "telemetry_store_record", "telemetry_store_invalid"),
    "store.spool": ("telemetry_store_spool_writer",),
}

BUILTIN_DISTRIBUTION = "telemetry-core"


@dataclass
class PluginInfo:
    """What ``telemetry plugins`` shows for one plugin.

    ``source`` is ``"builtin"``, ``"entrypoint"`` or ``"config"``; ``status``
    is ``"loaded"``, ``"disabled"`` or ``"broken"`` (``error`` says why).
    """

    name: str
    source: str
    distribution: str | None = None
    version: str | None = None
    status: str = "loaded"
    error: str | None = None
    plugin: Any = None
    hooks: list[str] = field(default_factory=list)


def make_plugin_manager(monitor: HookCallMonitor | None = None) -> pluggy.PluginManager:
    """A fresh plugin manager with every hook spec and the hook-call monitor installed."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    monitor = monitor or HookCallMonitor()
    pm.add_hookcall_monitoring(monitor.before, monitor.after)
    return pm


def load_plugins(pm: pluggy.PluginManager, *, disabled: Iterable[str] = (), load: Iterable[str] = (),
                 skip_broken: bool = False, entry_points: bool = True,
                 builtins: Iterable[tuple[str, str] | str] = DEFAULT_PLUGINS, import_builtins: bool = True,
                 broken_note: str = "skipped because plugins.skip_broken is true") -> list[PluginInfo]:
    """Load every plugin in the documented order and return what happened to each.

    ``builtins`` holds ``(name, "module[:Class]")`` pairs (a bare module name
    is registered under itself).  Raises :class:`~telemetry_core.errors.ConfigError`
    when ``disabled`` names an essential built-in that no loaded plugin replaces.
    With ``import_builtins=False`` only the third-party plugins are loaded: the
    built-ins' names are still reserved and the disabled ones listed as such, but
    none is imported (and the essentials are not checked).
    """
    builtins = tuple((entry, entry) if isinstance(entry, str) else entry for entry in builtins)
    disabled = _plugin_names(disabled, builtins)
    loader = _Loader(pm, set(disabled), skip_broken, reserved={name for name, _ in builtins},
                     broken_note=broken_note)
    for name in disabled:
        pm.set_blocked(name)
    if entry_points:
        for entry_point in metadata.entry_points(group=hookspecs.PROJECT_NAME):
            loader.entry_point(entry_point)
    for name, target in builtins:
        if import_builtins or name in loader.disabled:
            loader.module(target, name=name, source="builtin", distribution=BUILTIN_DISTRIBUTION,
                          version=__version__)
    for spec in load:
        loader.configured(spec)
    loader.check_pending()
    known = {info.name for info in loader.infos}
    for name in disabled:
        if name not in known:
            log.warning("plugins.disabled names %r, but no such plugin is installed or built in", name)
    if import_builtins:
        _check_essentials(pm, disabled, {name for name, _ in builtins})
    for info in loader.infos:
        if info.status == "loaded":
            info.hooks = sorted(caller.name for caller in pm.get_hookcallers(info.plugin) or ())
    return loader.infos


def _plugin_names(disabled: Iterable[str], builtins: tuple[tuple[str, str], ...]) -> list[str]:
    """``disabled`` with built-ins named by their module translated to their plugin names."""
    by_module = {target.split(":", 1)[0]: name for name, target in builtins}
    names = []
    for name in disabled:
        if name in by_module:
            log.warning("plugins.disabled names the module %r; the plugin's name is %r (use that)",
                        name, by_module[name])
            name = by_module[name]
        names.append(name)
    return list(dict.fromkeys(names))


def _check_essentials(pm: pluggy.PluginManager, disabled: list[str], builtin_names: set[str]) -> None:
    for name in disabled:
        hooks = ESSENTIAL_PLUGINS.get(name)
        if not hooks or name not in builtin_names:
            continue
        implemented = {caller.name for plugin in pm.get_plugins() for caller in pm.get_hookcallers(plugin) or ()}
        missing = [hook for hook in hooks if hook not in implemented]
        if missing:
            raise ConfigError(f"{name} is an essential built-in and no other plugin implements "
                              f"{', '.join(missing)}; remove it from plugins.disabled or install a plugin "
                              f"that replaces it", key="plugins.disabled")


class _Loader:
    def __init__(self, pm: pluggy.PluginManager, disabled: set[str], skip_broken: bool,
                 reserved: set[str], broken_note: str) -> None:
        self.pm = pm
        self.broken_note = broken_note
        self.reserved = reserved
        self.disabled = disabled
        self.skip_broken = skip_broken
        self.infos: list[PluginInfo] = []
        self.stats = counter_stats("/plugins_loading", "loaded", "broken", "disabled")

    def entry_point(self, entry_point: metadata.EntryPoint) -> None:
        dist = entry_point.dist
        info = PluginInfo(entry_point.name, "entrypoint", dist.name if dist else None,
                          dist.version if dist else None)
        if self._skip_disabled(info):
            return
        if info.name in self.reserved:
            self._broken(info, "the name is taken by a built-in plugin; rename the entry point")
            return
        try:
            plugin = entry_point.load()
        except Exception as exc:  # noqa: BLE001 - any import failure names the plugin
            self._broken(info, exc)
            return
        self._register(info, plugin)

    def module(self, target: str, *, source: str, distribution: str | None, version: str | None,
               name: str | None = None) -> None:
        """Import ``module`` or ``module:Class`` (then instantiated) and register it as ``name``."""
        info = PluginInfo(name or target, source, distribution, version)
        if self._skip_disabled(info):
            return
        module_name, _, class_name = target.partition(":")
        try:
            plugin = importlib.import_module(module_name)
            if class_name:
                plugin = getattr(plugin, class_name)()
        except Exception as exc:  # noqa: BLE001
            self._broken(info, exc)
            return
        self._register(info, plugin)

    def configured(self, spec: str) -> None:
        if spec.endswith(".py"):
            path = Path(spec)
            info = PluginInfo(path.stem, "config", None, None)
            if self._skip_disabled(info):
                return
            try:
                plugin = _import_file(path)
            except Exception as exc:  # noqa: BLE001
                self._broken(info, exc)
                return
            self._register(info, plugin)
        else:
            self.module(spec, source="config", distribution=_distribution_of(spec), version=None)

    def _skip_disabled(self, info: PluginInfo) -> bool:
        if info.name in self.disabled:
            info.status = "disabled"
            self.infos.append(info)
            self.stats.disabled += 1
            return True
        return False

    def _register(self, info: PluginInfo, plugin: Any) -> None:
        if self.pm.has_plugin(info.name) or self.pm.is_registered(plugin):
            self._broken(info, f"another plugin is already registered under the name {info.name!r} "
                               f"(or this object is registered twice)")
            return
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:  # noqa: BLE001 - PluginValidationError, ValueError (name taken) ...
            self._broken(info, exc)
            return
        info.plugin = plugin
        self.infos.append(info)
        self.stats.loaded += 1

    def _broken(self, info: PluginInfo, exc: BaseException | str) -> None:
        distribution = f"{info.distribution} {info.version}".strip() if info.distribution else None
        error = PluginLoadError(info.name, distribution, exc)
        if not self.skip_broken:
            raise error from (exc if isinstance(exc, BaseException) else None)
        log.error("%s; %s", error, self.broken_note)
        info.status, info.error = "broken", str(error)
        self.infos.append(info)
        self.stats.broken += 1

    def check_pending(self) -> None:
        while True:
            try:
                self.pm.check_pending()
                return
            except pluggy.PluginValidationError as exc:
                name = self.pm.get_name(exc.plugin) or repr(exc.plugin)
                info = next((i for i in self.infos if i.name == name), PluginInfo(name, "unknown"))
                self.pm.unregister(exc.plugin)
                self.infos = [i for i in self.infos if i is not info]
                self.stats.loaded -= 1
                info.plugin = None
                self._broken(info, exc)


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"plugin file {path} does not exist")
    module_name = f"telemetry_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _distribution_of(module_name: str) -> str | None:
    top = module_name.split(".", 1)[0]
    names = metadata.packages_distributions().get(top)
    return names[0] if names else None
