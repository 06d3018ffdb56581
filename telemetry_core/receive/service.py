"""Built-in plugin: the HTTP edge as a service of ``telemetry run``, plus its commands.

* ``telemetry_services``: an :class:`~telemetry_core.receive.edge_process.EdgeProcessService`
  for ``telemetry run``: the edge supervisor (:class:`~telemetry_core.receive.supervisor.EdgeService`,
  workers sharing ``receive.host``:``receive.port``) in a process of its own, so
  ``telemetry run`` can restart it.
  Disable this plugin (``plugins.disabled: [telemetry_core.receive.service]``) on a
  node that should not receive.
* ``telemetry serve --config FILE``: only the edge, in the foreground,
  until SIGTERM/SIGINT (exit 0 after a clean drain, 1 when the edge
  failed).
* ``telemetry bench edge --url URL``: the load generator
  (:mod:`telemetry_core.receive.bench`).

The endpoints, status codes and limits are in ``docs/receive.md``.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any
from urllib.parse import urlsplit

import click

from ..hookspecs import hookimpl
from ..commands import EXIT_FAILED, config_options, fail, finish, load_engine, profile_option

__all__ = ["telemetry_register_commands", "telemetry_services"]


@hookimpl
def telemetry_services(engine: Any) -> list[Any]:
    from .edge_process import EdgeProcessService

    return [EdgeProcessService(engine)]


@hookimpl
def telemetry_register_commands(cli: click.Group) -> None:

    @cli.command()
    @config_options
    @click.option("--workers", type=click.IntRange(1, 256), default=None,
                  help="Worker processes (default: receive.workers).")
    @profile_option
    def serve(config_path: str | None, overrides: tuple[str, ...], workers: int | None) -> None:
        """Run only the HTTP edge until SIGTERM/SIGINT.

        Starts receive.workers processes sharing receive.host:receive.port,
        restarts any that dies, and on SIGTERM/SIGINT lets each drain its
        in-flight requests and finish its spool file. Exits 2 if the edge
        cannot start (port in use, a worker that cannot start), 1 if it
        fails later.
        """
        from .supervisor import EdgeService

        engine = load_engine(config_path, overrides)
        engine.startup(command="serve")
        service = EdgeService(engine, workers=workers)
        try:
            service.start()
            failure = _wait(service)
        finally:
            service.stop(timeout=service.drain_timeout_s + 10.0)
            finish(engine, "serve")
        if failure:
            fail(failure, EXIT_FAILED)

    @cli.group()
    def bench() -> None:
        """Benchmarks and load generators."""

    @bench.command("edge")
    @click.option("--url", default="http://127.0.0.1:8080", show_default=True, help="The edge (or nginx) to load.")
    @click.option("--connections", type=click.IntRange(1, 10_000), default=32, show_default=True)
    @click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds to run.")
    @click.option("--requests", "request_count", type=click.IntRange(1), default=None,
                  help="Stop after this many requests instead of after --duration.")
    @click.option("--body-bytes", type=click.IntRange(100), default=27_000, show_default=True,
                  help="Approximate JSON size of each ping.")
    @click.option("--gzip", "compress", is_flag=True, help="Send gzip bodies (Content-Encoding: gzip).")
    @click.option("--batch", type=click.IntRange(0, 100_000), default=0,
                  help="Records per request to /submit/telemetry/batch_dims (0 = one submission per request).")
    @click.option("--ping", type=click.Path(exists=True, dir_okay=False), default=None,
                  help="A spool or node.js packed log whose first record is the ping to send "
                       "(default: a synthetic Firefox ping).")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    def bench_edge(url: str, connections: int, duration: float, request_count: int | None, body_bytes: int,
                   compress: bool, batch: int, ping: str | None, as_json: bool) -> None:
        """Send realistic submissions to an edge and report req/s, MB/s, latency percentiles and errors."""
        import asyncio

        from .bench import generate_load, ping_bodies, read_ping, synthetic_ping

        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise click.BadParameter(f"{url!r} is not an http://host:port URL", param_hint="--url")
        document = read_ping(ping) if ping else synthetic_ping(body_bytes)
        bodies = ping_bodies(document, 64, body_bytes, compress=compress)
        result = asyncio.run(generate_load(parts.hostname, parts.port or 80, bodies=bodies, connections=connections,
                                           duration=None if request_count else duration, requests=request_count,
                                           compress=compress, batch=batch))
        if as_json:
            click.echo(json.dumps(result.summary(), indent=2))
        else:
            click.echo(result.line())
        if result.ok == 0:
            sys.exit(EXIT_FAILED)


def _wait(service: Any) -> str | None:
    """Block until SIGTERM/SIGINT (``None``) or until the service fails (its reason)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(0.2):
            failure = service.failed()
            if failure:
                return failure
        return None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
