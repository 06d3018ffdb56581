"""Building the plugin manager and loading plugins, in a fixed, explicit order.

1. names listed in ``plugins.disabled`` are blocked (never imported);
2. third-party plugins are loaded from the ``telemetry`` entry-point group;
3. the built-in plugins (:data:`DEFAULT_PLUGINS`) are registered under their
   module names;
4. modules listed in ``plugins.load`` (importable names or ``.py`` paths)
   are registered;
5. ``check_pending()`` rejects implementations of hooks that do not exist.

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
from .errors import PluginLoadError
from .metrics.stats import HookCallMonitor, counter_stats

log = logging.getLogger(__name__)

#: Built-in plugins, registered under these module names.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "telemetry_core.compress.codecs_builtin",
    "telemetry_core.metrics.graphite",
    "telemetry_core.convert.stage",
    "telemetry_core.store.layout",
    "telemetry_core.store.local",
    "telemetry_core.store.s3.publisher",
    "telemetry_core.store.s3.policy",
    "telemetry_core.ops.retention",
    "telemetry_core.store.process.commands",
    "telemetry_core.store.process.replay",
    "telemetry_core.receive.paths",
    "telemetry_core.receive.bodies",
    "telemetry_core.receive.client_addr",
    "telemetry_core.store.spool.writer_plugin",
    "telemetry_core.receive.service",
    "telemetry_core.dedup.rules",
    "telemetry_core.dedup.sqlite_backend",
    "telemetry_core.dedup.redis_backend",
    "telemetry_core.dedup.ledger",
    "telemetry_core.dedup.check",
    "telemetry_core.compress.lzma_alone",
    "telemetry_core.reduce.inputs",
    "telemetry_core.reduce.histograms",
    "telemetry_core.reduce.local",
    "telemetry_core.reduce.spark",
    "telemetry_core.reduce.command",
    "telemetry_core.ops.doctor",
)

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
                 builtins: Iterable[str] = DEFAULT_PLUGINS) -> list[PluginInfo]:
    """Load every plugin in the documented order and return what happened to each."""
    disabled = list(dict.fromkeys(disabled))
    builtins = tuple(builtins)
    loader = _Loader(pm, set(disabled), skip_broken, reserved=set(builtins))
    for name in disabled:
        pm.set_blocked(name)
    if entry_points:
        for entry_point in metadata.entry_points(group=hookspecs.PROJECT_NAME):
            loader.entry_point(entry_point)
    for module_name in builtins:
        loader.module(module_name, source="builtin", distribution=BUILTIN_DISTRIBUTION, version=__version__)
    for spec in load:
        loader.configured(spec)
    loader.check_pending()
    known = {info.name for info in loader.infos}
    for name in disabled:
        if name not in known:
            log.warning("plugins.disabled names %r, but no such plugin is installed or built in", name)
    for info in loader.infos:
        if info.status == "loaded":
            info.hooks = sorted(caller.name for caller in pm.get_hookcallers(info.plugin) or ())
    return loader.infos


class _Loader:
    def __init__(self, pm: pluggy.PluginManager, disabled: set[str], skip_broken: bool,
                 reserved: set[str]) -> None:
        self.pm = pm
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

    def module(self, module_name: str, *, source: str, distribution: str | None, version: str | None) -> None:
        info = PluginInfo(module_name, source, distribution, version)
        if self._skip_disabled(info):
            return
        try:
            plugin = importlib.import_module(module_name)
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
        log.error("%s; skipped because plugins.skip_broken is true", error)
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
