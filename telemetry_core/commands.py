"""What a command needs, for the built-in commands and for plugins that add their own.

A plugin's ``telemetry_register_commands(cli)`` builds click commands with
these helpers (never with anything from :mod:`telemetry_core.cli`)::

    from telemetry_core.commands import EXIT_FAILED, config_options, fail, finish, load_engine

    @cli.command()
    @config_options
    def mycommand(config_path, overrides):
        engine = load_engine(config_path, overrides)   # one-line errors, exit 2 or 3
        ...
        finish(engine, "mycommand")                    # shutdown hooks + metrics snapshot

Exit codes: 0 success; :data:`EXIT_FAILED` (1) the command failed;
:data:`EXIT_CONFIG` (2) bad usage or configuration; :data:`EXIT_PLUGIN` (3)
a plugin failed to load; :data:`EXIT_CRASH_LOOP` (4) ``telemetry run`` gave
up on a service that kept dying.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Callable

import click

from .errors import ConfigError, PluginLoadError
from .redaction import redact

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only
    from .engine import Engine

log = logging.getLogger(__name__)

EXIT_FAILED, EXIT_CONFIG, EXIT_PLUGIN, EXIT_CRASH_LOOP = 1, 2, 3, 4


def config_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--config FILE`` and repeated ``--set dotted.key=value``."""
    function = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                            help="Override a config key (dotted path; the value is parsed as YAML). Repeatable.")(function)
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                        metavar="FILE", help="YAML config (default: built-in defaults).")(function)


def profile_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--profile FILE``: write cProfile stats of the command, and of every process it starts, to FILE.

    The processes the command starts (edge and processor workers) inherit
    ``TELEMETRY_PROFILE`` and write ``FILE.<process>.<pid>.prof``; this process
    writes ``FILE.main.<pid>.prof``, then FILE holds their sum
    (:mod:`telemetry_core.profiling`).
    """
    @click.option("--profile", "profile_path", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                  help="Write cProfile statistics of this command and every process it starts to FILE "
                       "(their sum; FILE.<process>.<pid>.prof each; read with python -m pstats).")
    @functools.wraps(function)
    def wrapper(*args: Any, profile_path: str | None, **kwargs: Any) -> Any:
        if profile_path is None:
            return function(*args, **kwargs)
        import cProfile
        import glob

        from . import profiling

        target = os.path.abspath(profile_path)
        for stale in glob.glob(glob.escape(target) + ".*.prof"):
            os.unlink(stale)
        previous = os.environ.get(profiling.ENVIRONMENT)
        os.environ[profiling.ENVIRONMENT] = target
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            return function(*args, **kwargs)
        finally:
            profiler.disable()
            if previous is None:
                os.environ.pop(profiling.ENVIRONMENT, None)
            else:
                os.environ[profiling.ENVIRONMENT] = previous
            profiler.dump_stats(profiling.part_path(target, "main"))
            parts = profiling.merge_profiles(target)
            log.info("profile of %d process(es) written to %s", len(parts), profile_path)
    return wrapper


def fail(message: str, code: int) -> None:
    """Print ``error: message`` (redacted: no credentials from URLs) and exit with ``code``."""
    click.echo(f"error: {redact(message)}", err=True)
    sys.exit(code)


def load_engine(config_path: str | None, overrides: tuple[str, ...]) -> Engine:
    """Build the engine for a command, turning load errors into one-line exits."""
    from .engine import Engine

    try:
        return Engine.from_config(config_path, overrides)
    except PluginLoadError as exc:
        fail(str(exc), EXIT_PLUGIN)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            click.echo(f"error: {redact(line)}", err=True)
        sys.exit(EXIT_CONFIG)
    raise AssertionError("unreachable")


def check_services(services: list[Any]) -> None:
    """Let every service that can (an optional ``check()`` method) refuse the config now,
    with a :class:`~telemetry_core.errors.ConfigError`, rather than when it starts."""
    for service in services:
        check = getattr(service, "check", None)
        if check is not None:
            check()


def finish(engine: Engine, command: str) -> None:
    """Shutdown hooks, then a metrics snapshot for ``telemetry metrics``."""
    from .metrics.stats import write_snapshot

    engine.shutdown(command=command)
    if engine.config.get("metrics.snapshot"):
        try:
            write_snapshot(engine.config.data_dir / "metrics", command)
        except OSError as exc:
            log.warning("could not write the metrics snapshot: %s", exc)
