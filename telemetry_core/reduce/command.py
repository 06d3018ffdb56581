"""Built-in plugin: the ``telemetry mapreduce`` command (and ``telemetry report``, :mod:`.report`).

    telemetry mapreduce --job JOB.py --filter FILTER.json [--input DIR|s3://bucket/prefix]
                        --output OUT [--executor local|spark] [--mappers N] [--reducers M]
                        [--dedup] [--fail-fast] [--json] [--config FILE] [--set KEY=VALUE ...]

Exit codes: 0 the job ran and every file and record was processed; 1 the
job ran but some files could not be read or the job's code raised (the
output holds everything else; the summary says what failed), or
``--fail-fast`` stopped it, or a task process died; 2 bad usage: the job
script, the filter, the input or the configuration cannot be used.  The
summary goes to stderr; ``--json`` prints the statistics on stdout.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..hookspecs import hookimpl
from ..commands import EXIT_CONFIG, EXIT_FAILED, config_options, fail, finish, load_engine, profile_option


def _human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def summary_lines(stats: dict[str, Any]) -> list[str]:
    """The human summary of a job's statistics."""
    seconds = max(stats.get("seconds", 0.0), 1e-6)
    lines = [f"mapreduce: {stats['files']} files ({_human_bytes(stats['bytes'])}), {stats['records']:,} records "
             f"in {seconds:.1f} s ({stats['records'] / seconds:,.0f} records/s) with the {stats['executor']} "
             f"executor ({stats['mappers']} mappers, {stats['reducers']} reducers)",
             f"output: {stats['output']} ({stats['lines']:,} lines, {stats['keys']:,} keys)"]
    if stats.get("skipped"):
        lines.append(f"dedup: {stats['skipped']:,} superseded records skipped")
    if stats.get("bad_lines"):
        lines.append(f"warning: {stats['bad_lines']:,} lines were not <id>\\t<json> and were skipped")
    for key, message in sorted(stats.get("file_errors", {}).items()):
        lines.append(f"error: could not read {key}: {message}")
    if stats.get("map_errors") or stats.get("reduce_errors"):
        where = stats.get("error_counts", {})
        lines.append(f"error: the job's code raised {stats['map_errors']:,} times in map and "
                     f"{stats['reduce_errors']:,} times in reduce ({len(where)} places); first tracebacks:")
        for text in stats.get("tracebacks", []):
            lines.extend("  " + line for line in text.rstrip().splitlines())
    return lines


def make_command() -> click.Command:
    from ..errors import ConfigError, TelemetryError
    from .filters import FilterError
    from .job import JobScriptError
    from .runner import run_job

    @click.command("mapreduce")
    @click.option("--job", "job_path", required=True, metavar="JOB.py",
                  help="The job script: map(key, dims, value, context), reduce(key, values, context) ...")
    @click.option("--filter", "filter_path", required=True, metavar="FILTER.json",
                  help="Dimension filter (the original telemetry-server format).")
    @click.option("--input", "input_uri", default=None, metavar="DIR|s3://BUCKET/PREFIX",
                  help="Archive to read (default: the configured publish target).")
    @click.option("--output", required=True, metavar="OUT", help="The output file of key<TAB>value lines.")
    @click.option("--executor", default=None, metavar="NAME",
                  help="local (processes) or spark (default: reduce.executor).")
    @click.option("--mappers", type=click.IntRange(1, 4096), default=None, metavar="N",
                  help="Mapper processes or Spark map tasks (default: reduce.mappers).")
    @click.option("--reducers", type=click.IntRange(1, 4096), default=None, metavar="M",
                  help="Reducers (default: reduce.reducers).")
    @click.option("--dedup", is_flag=True, help="Skip records the dedup ledger marks superseded.")
    @click.option("--fail-fast", is_flag=True, help="Stop at the first error instead of counting errors.")
    @click.option("--json", "as_json", is_flag=True, help="Print the job's statistics as JSON on stdout.")
    @config_options
    @profile_option
    def mapreduce(job_path: str, filter_path: str, input_uri: str | None, output: str, executor: str | None,
                  mappers: int | None, reducers: int | None, dedup: bool, fail_fast: bool, as_json: bool,
                  config_path: str | None, overrides: tuple[str, ...]) -> None:
        """Run a MapReduce job over stored telemetry (docs/mapreduce.md)."""
        engine = load_engine(config_path, overrides)
        engine.startup(command="mapreduce")
        code, message = 0, None
        stats: dict[str, Any] = {}
        try:
            stats = run_job(engine, job_path=job_path, filter_path=filter_path, output=output,
                            input_uri=input_uri, executor=executor, mappers=mappers, reducers=reducers,
                            dedup=dedup, fail_fast=fail_fast)
        except (JobScriptError, FilterError, ConfigError) as exc:
            code, message = EXIT_CONFIG, str(exc)
        except TelemetryError as exc:
            code, message = EXIT_FAILED, str(exc)
        finally:
            finish(engine, "mapreduce")
        if message is not None:
            fail(message, code)
        for line in summary_lines(stats):
            click.echo(line, err=True)
        if as_json:
            click.echo(json.dumps({k: v for k, v in stats.items() if k != "tasks"}, indent=2, sort_keys=True))
        sys.exit(EXIT_FAILED if stats.get("errors") else 0)

    return mapreduce


@hookimpl
def telemetry_register_commands(cli: Any) -> None:
    from .report import report_command

    cli.add_command(make_command())
    cli.add_command(report_command)
