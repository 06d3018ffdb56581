"""The ``telemetry`` command line.

Exit codes: 0 success; 1 a command failed (records failed ...); 2 bad usage
or configuration (including a config a service refuses, checked before
``run`` starts anything); 3 a plugin failed to load; 4 ``telemetry run``
gave up on a service in a crash loop.  Errors are one line on stderr
starting with ``error:``.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from .errors import ConfigError, PluginLoadError, TelemetryError
from .commands import (EXIT_CONFIG, EXIT_CRASH_LOOP, EXIT_FAILED, EXIT_PLUGIN, check_services, config_options, fail,
                       finish, load_engine, profile_option)
from .engine import Engine
from .plugins import BUILTIN_COMMANDS
from .redaction import REDACTED, has_userinfo

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only
    from .supervision import ServiceSupervisor

log = logging.getLogger(__name__)



class TelemetryGroup(click.Group):
    """The top-level group; plugins' commands are added when a command is looked up.

    The command's own ``--config``/``--set`` are read first, so the plugins a
    config disables are never imported, by any command
    (:meth:`~telemetry_core.engine.Engine.discover_commands`).  Third-party plugins
    add their commands then; a built-in plugin is imported only when one of
    its commands runs (or shows its own help): ``telemetry --help`` lists the
    built-in commands of the default selection from
    :data:`~telemetry_core.plugins.BUILTIN_COMMANDS`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._own_commands: set[str] | None = None
        self._selection: tuple[str | None, tuple[str, ...]] | None = None
        self._arguments: list[str] = []
        self._builtins: dict[str, str] = {}  # built-in command -> its plugin, for the selection

    def _own(self) -> set[str]:
        """The commands defined in this module (known once every decorator ran)."""
        if self._own_commands is None:
            self._own_commands = set(self.commands)
        return self._own_commands

    def _load_plugin_commands(self) -> None:
        selection = config_selection(self._arguments)
        if selection == self._selection:
            return
        for name in set(self.commands) - self._own():  # another selection's commands
            del self.commands[name]
        self._selection = selection
        self._builtins = Engine.discover_commands(cli=self, path=selection[0], overrides=selection[1])

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        self._arguments = list(args[1:])
        try:
            return super().resolve_command(ctx, args)
        finally:
            self._arguments = []

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return sorted({*self.commands, *self._builtins})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self._own():
            self._load_plugin_commands()
            if cmd_name not in self.commands and cmd_name in self._builtins:
                Engine.add_builtin_commands(cli=self, plugin=self._builtins[cmd_name])
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Click's command list, where a built-in command that is not imported shows its table entry."""
        self._load_plugin_commands()
        listed = {name: click.Command(name, help=BUILTIN_COMMANDS[name][1]) for name in self._builtins}
        click.Group.format_commands(click.Group(commands={**listed, **self.commands}), ctx, formatter)


def config_selection(arguments: list[str]) -> tuple[str | None, tuple[str, ...]]:
    """``(--config, --set ...)`` found in a command's arguments (either ``--opt value``
    or ``--opt=value``), for choosing plugins before the command is parsed."""
    path: str | None = None
    overrides: list[str] = []
    items = iter(arguments)
    for item in items:
        if item == "--":
            break
        for option in ("--config", "--set"):
            if item == option:
                value = next(items, None)
            elif item.startswith(option + "="):
                value = item[len(option) + 1:]
            else:
                continue
            if value is not None:
                if option == "--config":
                    path = value
                else:
                    overrides.append(value)
    return path, tuple(overrides)


@click.group(cls=TelemetryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="telemetry")
def cli() -> None:
    """telemetry-core: receive, store, convert, de-duplicate, compress, publish
    and reduce browser telemetry. Every stage is a family of plugin hooks;
    plugins.yaml wires them."""


@cli.command()
@config_options
@click.option("--duration", type=float, default=None, metavar="SECONDS",
              help="Stop by itself after SECONDS (default: run until SIGTERM/SIGINT).")
@profile_option
def run(config_path: str | None, overrides: tuple[str, ...], duration: float | None) -> None:
    """Run every stage that plugins provide (edge, processor ...) until stopped.

    Every service is supervised: one that dies is restarted after a back-off
    and counted under /services/<name>/restarts (docs/operations/deploy.md).
    SIGTERM or SIGINT stops the services in reverse order, letting each
    finish in-flight work. Exits 2 (one line) if a service refuses the
    config, 4 if a service is in a crash loop (supervise.crash_loop_restarts
    restarts within supervise.crash_loop_window_s).
    """
    from .metrics.heartbeat import NodeMonitor
    from .supervision import RestartPolicy, ServiceSupervisor

    engine = load_engine(config_path, overrides)
    log.info("node %s starting, data in %s", engine.node_id, engine.config.data_dir)
    engine.startup(command="run")
    supervisor = ServiceSupervisor([], RestartPolicy.from_config(engine.config))
    exit_code = 0
    monitor = NodeMonitor(engine).start()  # the node view's "run" member, throughput history, heartbeat
    try:
        services = engine.services()
        check_services(services)  # a ConfigError here: exit 2 (main), nothing started
        supervisor = ServiceSupervisor(services, RestartPolicy.from_config(engine.config))
        if not services:
            log.warning("nothing to run: no installed plugin provides a service for 'telemetry run'")
            return
        supervisor.start()
        reason = _wait(supervisor, duration)
        if reason:
            log.error("%s; stopping", reason)
            exit_code = EXIT_CRASH_LOOP
    finally:
        supervisor.stop()
        monitor.stop()
        finish(engine, "run")
    sys.exit(exit_code)


def _wait(supervisor: ServiceSupervisor, duration: float | None) -> str | None:
    """Supervise until a signal or the duration (``None``), or a crash loop (its reason)."""
    import signal
    import threading
    import time

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    deadline = None if duration is None else time.monotonic() + duration
    try:
        return supervisor.watch(stop, deadline)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@cli.command()
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(config_path: str | None, overrides: tuple[str, ...], as_json: bool) -> None:
    """List plugins: name, where from, distribution and version, hooks implemented."""
    engine = load_engine(config_path, overrides)
    rows = [{"name": p.name, "source": p.source, "distribution": p.distribution, "version": p.version,
             "status": p.status, "error": p.error, "hooks": p.hooks} for p in engine.plugins]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        origin = f"{row['distribution']} {row['version'] or ''}".strip() if row["distribution"] else "-"
        click.echo(f"{row['name']}  [{row['source']}, {origin}]  {row['status']}")
        if row["error"]:
            click.echo(f"    error: {row['error']}")
        for hook in row["hooks"]:
            click.echo(f"    {hook}")
        if row["status"] == "loaded" and not row["hooks"]:
            click.echo("    (implements no hooks)")


@cli.command()
@click.option("--stage", type=click.Choice(["lifecycle", "receive", "store", "convert", "dedup",
                                            "compress", "reduce"]), help="Only this stage's hooks.")
def hooks(stage: str | None) -> None:
    """List every hook spec with its arguments and one-line summary."""
    from .catalog import hook_descriptions

    for hook in hook_descriptions():
        if stage and hook.stage != stage:
            continue
        semantics = "first non-None result wins" if hook.firstresult else "all results collected"
        click.echo(f"{hook.signature}\n    {hook.summary}  [{semantics}]")


@cli.group()
def config() -> None:
    """Check or show a configuration."""


@config.command("check")
@config_options
def config_check(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Validate a config (and the schema file it names); exit 2 with every problem listed."""
    engine = load_engine(config_path, overrides)
    try:
        schema = engine.schema
        check_services(engine.services())
    except TelemetryError as exc:
        fail(str(exc), EXIT_CONFIG)
    for key, value in _flatten(engine.config.data):
        if isinstance(value, str) and has_userinfo(value):
            click.echo(f"warning: {key} holds credentials in its URL; remove them and give them to the client "
                       "the usual way (for S3: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials "
                       "or an instance role)", err=True)
    click.echo(f"ok: {engine.config.source} is valid ({len(engine.plugins)} plugins, "
               f"schema dimensions: {', '.join(schema.names)})")


def _flatten(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, value)`` for every leaf of a config tree."""
    if isinstance(node, dict):
        return [item for name, child in node.items() for item in _flatten(child, f"{prefix}{name}.")]
    if isinstance(node, list):
        return [item for index, child in enumerate(node) for item in _flatten(child, f"{prefix[:-1]}[{index}].")]
    return [(prefix[:-1], node)]


@config.command("show")
@config_options
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
def config_show(config_path: str | None, overrides: tuple[str, ...], fmt: str) -> None:
    """Print the effective config with every default; secrets print as ***."""
    import yaml

    engine = load_engine(config_path, overrides)
    data = engine.config.redacted()
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip())
    if engine.config.secret_keys:
        click.echo(f"# {REDACTED} hides: {', '.join(sorted(engine.config.secret_keys))}", err=True)


@cli.command()
@config_options
@click.option("--format", "fmt", type=click.Choice(["json", "prometheus"]), default="json", show_default=True)
@click.option("--command", "command_name", default=None, help="Only the snapshot of this command.")
def metrics(config_path: str | None, overrides: tuple[str, ...], fmt: str, command_name: str | None) -> None:
    """Show the metrics snapshots that commands wrote to data_dir/metrics on exit.

    Long-running services serve live metrics at /status and /metrics; this
    command is for one-shot processes (telemetry process --once, mapreduce).
    """
    from .metrics.stats import add_families, read_snapshots, render_families

    engine = load_engine(config_path, overrides)
    directory = engine.config.data_dir / "metrics"
    documents = [d for d in read_snapshots(directory) if command_name in (None, d.get("command"))]
    for document in documents:
        if "error" in document:
            click.echo(f"warning: {document['error']}", err=True)
    documents = [d for d in documents if "error" not in d]
    if not documents:
        fail(f"no metrics snapshots in {directory}" + (f" for command {command_name!r}" if command_name else ""),
             EXIT_FAILED)
    if fmt == "json":
        click.echo(json.dumps({d["command"]: d for d in documents}, indent=2, sort_keys=True))
        return
    families: dict[str, Any] = {}
    for document in documents:
        add_families(families, document["stats"], {"command": document["command"]})
    click.echo(render_families(families), nl=False)


def main() -> None:
    """Console-script entry point."""
    try:
        cli(standalone_mode=True)
    except PluginLoadError as exc:
        fail(str(exc), EXIT_PLUGIN)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    except TelemetryError as exc:
        fail(str(exc), EXIT_FAILED)
