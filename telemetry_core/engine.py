"""The engine: configuration, plugins and metrics, behind typed methods.

Pipeline code (the edge, the processor, the job runner, the CLI) calls the
methods of :class:`Engine`, always with keyword arguments; it never touches
``pm.hook`` or pluggy internals.  Each method states which hook it calls and
what happens when no plugin answers.

Build one with :meth:`Engine.from_config` (reads YAML, loads plugins in the
documented order, validates, configures logging, calls
``telemetry_configure``), or, in tests, from a plugin manager you filled
yourself with :meth:`Engine.from_plugin_manager`.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Iterable

import pluggy
from greplin import scales

from .config.loader import Config, RawConfig, read_config, validate
from .errors import ConfigError, RecordError
from .config.logging_setup import configure_logging, set_node_id
from .node import resolve_node_id
from .plugins import BUILTIN_COMMANDS, DEFAULT_PLUGINS, PluginInfo, load_plugins, make_plugin_manager
from .records import Rejection

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only
    from .config.options import Section
    from .interfaces import (Codec, DedupBackend, Executor, HistogramSpec, InputSource, JobContext, JobSpec,
                             Publisher, PublishedFile, RecordFilter, Route, Service, SpoolWriter, StoreBatch)
    from .records import Decision, DedupKey, Record, Submission, SubmissionPath
    from .schema import Schema

log = logging.getLogger(__name__)

#: "Pick one" config keys, the factory hook their value selects, and values every node accepts.
CHOICE_KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "compress.codec": ("telemetry_compress_codec", ()),
    "dedup.backend": ("telemetry_dedup_backend", ("none",)),
    "store.publish.backend": ("telemetry_store_publisher", ()),
    "reduce.executor": ("telemetry_reduce_executor", ()),
}


def check_choices(pm: pluggy.PluginManager, config: Config) -> None:
    """Refuse a configured name no plugin answers (``telemetry_config_choices``),
    with one line naming the key and the installed choices."""
    builtin = {name for name, _ in DEFAULT_PLUGINS}
    for key, (factory, always) in CHOICE_KEYS.items():
        value = config.get(key)
        if value is None or value in always:
            continue
        choices = sorted({name for batch in pm.hook.telemetry_config_choices(key=key) for name in batch or ()})
        if value in choices:
            continue
        unlisted = [impl.plugin_name for impl in getattr(pm.hook, factory).get_hookimpls()
                    if impl.plugin_name not in builtin and not hasattr(impl.plugin, "telemetry_config_choices")]
        if unlisted:
            log.warning("%s: %r is not listed by any plugin; %s answer %s without naming their choices, "
                        "so it cannot be checked before use", key, value, ", ".join(unlisted), factory)
            continue
        raise ConfigError(f"no plugin answers {value!r}; installed choices: {', '.join(choices + list(always))}",
                          source=config.source, key=key)


class Engine:
    """Configuration + plugin manager + metrics; the only door to the hooks.

    ``state`` is a place for plugins' per-run objects, keyed by plugin name
    (e.g. the Graphite pusher started in ``telemetry_startup``).
    """

    def __init__(self, pm: pluggy.PluginManager, config: Config, plugins: list[PluginInfo] | None = None) -> None:
        self._pm = pm
        self.config = config
        self.plugins = plugins or []
        self.state: dict[str, Any] = {}
        self._node_id: str | None = None
        self._schema: Schema | None = None
        #: ``(config path, --set overrides)`` this engine was built from, so child
        #: processes (edge workers, processor workers) can build the same engine.
        self.origin: tuple[str | None, tuple[str, ...]] = (None, ())
        #: Which edge worker this process is (0, 1 ...), set by the worker before
        #: ``startup``; ``None`` in every other process.  Per-process metric
        #: exporters (Graphite) use it to keep the workers' series apart.
        self.worker: int | None = None
        #: This process's name in the node view (``worker-<n>``, ``processor-<n>``, ``run`` ...),
        #: set by :func:`telemetry_core.metrics.node.member_process`; ``None`` elsewhere.
        self.process_label: str | None = None
        self._counts = scales.collection("/convert", scales.IntStat("warnings"), scales.IntDictStat("warning_names"))

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None, overrides: Iterable[str] = (), *,
                    entry_points: bool = True, builtins: Iterable[str] = DEFAULT_PLUGINS,
                    configure_logs: bool = True) -> "Engine":
        """Read ``path`` (``None`` = defaults) with ``--set`` overrides, load plugins, validate,
        configure logging, call ``telemetry_configure`` and check that every "pick one"
        name (``compress.codec`` ...) has a plugin that answers it (:func:`check_choices`)."""
        raw = read_config(path, overrides)
        disabled, load, skip_broken = raw.plugin_selection()
        pm = make_plugin_manager()
        infos = load_plugins(pm, disabled=disabled, load=load, skip_broken=skip_broken,
                             entry_points=entry_points, builtins=builtins)
        engine = cls.from_plugin_manager(pm, raw, plugins=infos, disabled=disabled, configure_logs=configure_logs)
        check_choices(pm, engine.config)
        engine.origin = (None if path is None else os.fspath(path), tuple(overrides))
        return engine

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager, raw: RawConfig | None = None, *,
                            plugins: list[PluginInfo] | None = None, disabled: Iterable[str] = (),
                            configure_logs: bool = False) -> "Engine":
        """Validate ``raw`` (default: no file) against the core schema and the sections
        the registered plugins declare, then configure."""
        raw = raw or read_config(None)
        sections: dict[str, Section] = {}
        for declared in pm.hook.telemetry_config_schema():
            for name, section in (declared or {}).items():
                if name in sections:
                    raise ConfigError(f"two plugins declare the config section plugins.{name}")
                sections[name] = section
        config = validate(raw, sections, disabled)
        engine = cls(pm, config, plugins)
        if configure_logs:
            configure_logging(config["logging"], config.source)
        pm.hook.telemetry_configure(config=config)
        return engine

    # ------------------------------------------------------------------ node facts

    @property
    def node_id(self) -> str:
        """This node's id (resolving ``auto`` creates ``data_dir/node_id`` on first use)."""
        if self._node_id is None:
            self._node_id = resolve_node_id(self.config["node_id"], self.config.data_dir)
            set_node_id(self._node_id)
        return self._node_id

    @property
    def schema(self) -> Schema:
        """The dimension schema named by ``schema`` (or the packaged one)."""
        if self._schema is None:
            from .schema import Schema

            self._schema = Schema.load(self.config["schema"])
        return self._schema

    # ------------------------------------------------------------------ lifecycle

    def startup(self, *, command: str) -> None:
        """``telemetry_startup``: every implementation is called."""
        self._pm.hook.telemetry_startup(engine=self, command=command)

    def services(self) -> list[Service]:
        """``telemetry_services``: every service contributed by any plugin."""
        return [service for batch in self._pm.hook.telemetry_services(engine=self) for service in batch or ()]

    def shutdown(self, *, command: str) -> list[BaseException]:
        """``telemetry_shutdown``: every implementation is called even if some raise;
        returns the exceptions raised (each is logged)."""
        failures: list[BaseException] = []
        caller = self._pm.hook.telemetry_shutdown
        for impl in reversed(caller.get_hookimpls()):
            others = [p for p in self._pm.get_plugins() if p is not impl.plugin]
            try:
                self._pm.subset_hook_caller("telemetry_shutdown", remove_plugins=others)(
                    engine=self, command=command)
            except Exception as exc:  # noqa: BLE001 - reported, and the others still run
                log.error("plugin %s failed during shutdown: %s", impl.plugin_name, exc)
                failures.append(exc)
        return failures

    def register_commands(self, *, cli: Any) -> None:
        """``telemetry_register_commands``: every plugin may add commands to ``cli``."""
        self._pm.hook.telemetry_register_commands(cli=cli)

    @staticmethod
    def discover_commands(*, cli: Any, path: str | os.PathLike[str] | None,
                          overrides: Iterable[str] = ()) -> dict[str, str]:
        """Let the third-party plugins that config ``path`` (+ ``--set`` overrides)
        selects add their commands to ``cli`` (``telemetry_register_commands``),
        before any command runs, and return the selection's built-in commands
        (:data:`~telemetry_core.plugins.BUILTIN_COMMANDS`) that no third-party
        command replaces, as ``{command: plugin}``.  No built-in is imported
        here: :meth:`add_builtin_commands` does that for a command that runs.

        ``plugins.disabled`` holds here as everywhere: a disabled plugin is never
        imported and its commands are not offered.  A plugin that fails to load
        adds no command and is reported (logged as an error naming it and its
        distribution); the command that then loads the engine reports it again
        with its exit code.  A config that cannot be read loads no third-party
        code, and the command itself then reports the config error.
        """
        try:
            disabled, load, _ = read_config(path, overrides).plugin_selection()
            entry_points = True
        except ConfigError:
            disabled, load, entry_points = [], [], False
        pm = make_plugin_manager()
        infos = load_plugins(pm, disabled=disabled, load=load, skip_broken=True, entry_points=entry_points,
                             import_builtins=False, broken_note="its commands are not available")
        pm.hook.telemetry_register_commands(cli=cli)
        off = {info.name for info in infos if info.status == "disabled"}
        return {command: plugin for command, (plugin, _) in BUILTIN_COMMANDS.items()
                if plugin not in off and command not in cli.commands}

    @staticmethod
    def add_builtin_commands(*, cli: Any, plugin: str) -> None:
        """Import the built-in ``plugin`` and add its commands to ``cli``
        (``telemetry_register_commands``), keeping any command of the same name
        a third-party plugin added.  A built-in that fails to load adds no
        command and is logged."""
        import click

        pm = make_plugin_manager()
        load_plugins(pm, entry_points=False, skip_broken=True, builtins=[(plugin, dict(DEFAULT_PLUGINS)[plugin])],
                     broken_note="its commands are not available")
        commands = click.Group()
        pm.hook.telemetry_register_commands(cli=commands)
        for name, command in commands.commands.items():
            if name not in cli.commands:
                cli.add_command(command, name)

    # ------------------------------------------------------------------ receive

    def receive_routes(self) -> list[Route]:
        return [route for batch in self._pm.hook.telemetry_receive_routes(engine=self) for route in batch or ()]

    def parse_path(self, *, path: str) -> SubmissionPath | Rejection:
        """``telemetry_receive_parse_path``; no answer at all is a 404-style rejection."""
        result = self._pm.hook.telemetry_receive_parse_path(path=path)
        return result if result is not None else Rejection(404, "unknown_path", "no plugin accepts this path")

    def enrich(self, *, submission: Submission) -> None:
        self._pm.hook.telemetry_receive_enrich(submission=submission)

    def validate_submission(self, *, submission: Submission) -> Rejection | None:
        """``telemetry_receive_validate``: the first rejection, or ``None`` to accept."""
        rejections = self._pm.hook.telemetry_receive_validate(submission=submission)
        return rejections[0] if rejections else None

    def accepted(self, *, submission: Submission) -> None:
        self._pm.hook.telemetry_receive_accepted(submission=submission)

    # ------------------------------------------------------------------ store

    def spool_writer(self, *, worker: int) -> SpoolWriter:
        writer = self._pm.hook.telemetry_store_spool_writer(engine=self, worker=worker)
        if writer is None:
            raise ConfigError("no installed plugin provides a spool writer (telemetry_store_spool_writer)")
        return writer

    def partition(self, *, record: Record, seq: int) -> str:
        """``telemetry_store_partition``; no answer is a ``write_failed`` record error."""
        path = self._pm.hook.telemetry_store_partition(record=record, schema=self.schema, node_id=self.node_id,
                                                       seq=seq)
        if path is None:
            raise RecordError("write_failed", "no plugin chose a store partition for the record")
        return path

    def store_record(self, *, record: Record, partition: str, batch: StoreBatch) -> None:
        self._pm.hook.telemetry_store_record(record=record, partition=partition, batch=batch)

    def store_invalid(self, *, record: Record, error: RecordError, batch: StoreBatch) -> None:
        self._pm.hook.telemetry_store_invalid(record=record, error=error, batch=batch)

    def publisher(self) -> Publisher:
        publisher = self._pm.hook.telemetry_store_publisher(engine=self)
        if publisher is None:
            backend = self.config.get("store.publish.backend")
            raise ConfigError(f"no installed plugin provides publish backend {backend!r}",
                              source=self.config.source, key="store.publish.backend")
        return publisher

    def published(self, *, published: PublishedFile) -> None:
        self._pm.hook.telemetry_store_published(published=published)

    # ------------------------------------------------------------------ convert

    def histogram_spec(self, *, revision: str | None, info: dict[str, Any]) -> HistogramSpec | None:
        return self._pm.hook.telemetry_convert_histogram_spec(revision=revision, info=info, engine=self)

    def addon_histograms(self, *, addon_id: str) -> dict[str, dict[str, Any]] | None:
        return self._pm.hook.telemetry_convert_addon_histograms(addon_id=addon_id)

    def convert_payload(self, *, record: Record, spec: HistogramSpec | None) -> list[str]:
        """``telemetry_convert_payload``: returns every warning name (each is counted
        under ``/convert/warnings`` and ``/convert/warning_names/<name>``)."""
        warnings = [name for batch in self._pm.hook.telemetry_convert_payload(record=record, spec=spec, engine=self)
                    for name in batch or ()]
        if warnings:
            self._counts.warnings += len(warnings)
            for name in warnings:
                self._counts.warning_names[name] += 1
        return warnings

    # ------------------------------------------------------------------ dedup

    def dedup_backend(self) -> DedupBackend:
        backend = self._pm.hook.telemetry_dedup_backend(engine=self)
        if backend is None:
            name = self.config.get("dedup.backend")
            raise ConfigError(f"no installed plugin provides dedup backend {name!r}",
                              source=self.config.source, key="dedup.backend")
        return backend

    def dedup_key(self, *, record: Record) -> DedupKey | None:
        return self._pm.hook.telemetry_dedup_key(record=record)

    def dedup_decided(self, *, record: Record, decision: Decision) -> None:
        self._pm.hook.telemetry_dedup_decided(record=record, decision=decision)

    # ------------------------------------------------------------------ compress

    def codec(self, *, name: str) -> Codec:
        """``telemetry_compress_codec``; an unknown name is a :class:`ConfigError`."""
        codec = self._pm.hook.telemetry_compress_codec(name=name)
        if codec is None:
            raise ConfigError(f"no installed plugin provides codec {name!r} (built in: xz, gzip, zstd)",
                              source=self.config.source, key="compress.codec")
        return codec

    # ------------------------------------------------------------------ reduce

    def executor(self, *, name: str) -> Executor:
        executor = self._pm.hook.telemetry_reduce_executor(name=name, engine=self)
        if executor is None:
            raise ConfigError(f"no installed plugin provides executor {name!r}", key="reduce.executor")
        return executor

    def reduce_input(self, *, uri: str) -> InputSource:
        source = self._pm.hook.telemetry_reduce_input(uri=uri, engine=self)
        if source is None:
            raise ConfigError(f"no installed plugin reads input {uri!r}")
        return source

    def record_filters(self, *, job: JobSpec) -> list[RecordFilter]:
        return [f for batch in self._pm.hook.telemetry_reduce_record_filters(job=job, engine=self)
                for f in batch or ()]

    def reduce_context(self, *, context: JobContext, job: JobSpec) -> None:
        self._pm.hook.telemetry_reduce_context(context=context, job=job)
