"""Running one MapReduce job: what ``telemetry mapreduce`` does, as a function.

:func:`run_job` checks the job script and the filter, opens the input
(``telemetry_reduce_input``; default: the configured publish target),
lists the files the filter selects (pushed down to the listing), and hands
them to the executor (``telemetry_reduce_executor``), which writes the one
output file.  It returns the executor's statistics plus ``input``,
``list_seconds`` and ``listed``; ``stats["errors"]`` counts what makes the
answer incomplete (job-code errors and unreadable files).

The demo and other programs call it directly::

    from telemetry_core.reduce.runner import run_job
    stats = run_job(engine, job_path="examples/jobs/count_by_day.py",
                    filter_path="examples/filters/all.json", output="out.txt", executor="local")
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from greplin import scales

from ..interfaces import JobSpec
from .filters import DimensionFilter
from .job import load_job

log = logging.getLogger(__name__)


def run_job(engine: Any, *, job_path: str | os.PathLike[str], filter_path: str | os.PathLike[str],
            output: str | os.PathLike[str], input_uri: str | None = None, executor: str | None = None,
            mappers: int | None = None, reducers: int | None = None, dedup: bool = False,
            fail_fast: bool = False, progress: bool | None = None, work_dir: str | None = None) -> dict[str, Any]:
    """Run a job and return its statistics (see the module docstring).

    Raises :class:`~telemetry_core.reduce.job.JobScriptError`,
    :class:`~telemetry_core.reduce.filters.FilterError` or
    :class:`~telemetry_core.errors.ConfigError` before anything runs;
    :class:`~telemetry_core.reduce.tasks.JobAborted` for ``fail_fast``;
    ``ExecutorError`` when a task process dies.
    """
    settings = engine.config.get("reduce") or {}
    script = load_job(job_path)
    dimension_filter = DimensionFilter.load(filter_path, engine.schema)
    uri = input_uri or engine.publisher().uri
    source = engine.reduce_input(uri=uri)
    chosen_mappers = mappers or settings.get("mappers", "auto")
    if chosen_mappers == "auto":
        chosen_mappers = os.cpu_count() or 1
    job = JobSpec(
        job_path=script.path, filter=dimension_filter, output=str(Path(output).resolve()), input_uri=uri,
        mappers=int(chosen_mappers), reducers=int(reducers or settings.get("reducers", 1)), dedup=dedup,
        fail_fast=fail_fast, work_dir=work_dir or settings.get("work_dir"),
        config_origin=engine.origin, combine_size=int(settings.get("combine_size", 50)),
        max_tracebacks=int(settings.get("max_tracebacks", 5)),
        progress=settings.get("progress", True) if progress is None else progress)
    runner = engine.executor(name=executor or settings.get("executor", "local"))
    started = time.monotonic()
    inputs = list(source.list(dimension_filter))
    listed = time.monotonic() - started
    log.info("mapreduce: %d files (%d bytes) selected in %s", len(inputs), sum(i.size for i in inputs), uri)
    stats = runner.run(job, inputs, source)
    stats.update(input=uri, listed=len(inputs), list_seconds=round(listed, 3), output=job.output)
    metrics = scales.collection("/mapreduce", scales.IntStat("jobs"), scales.IntStat("files"),
                                scales.IntStat("records"), scales.IntStat("errors"), scales.IntStat("bad_lines"))
    metrics.jobs += 1
    metrics.files += stats.get("files", 0)
    metrics.records += stats.get("records", 0)
    metrics.errors += stats.get("errors", 0)
    metrics.bad_lines += stats.get("bad_lines", 0)
    return stats
