"""Built-in plugin: the ``spark`` MapReduce executor (Apache Spark, via pyspark).

The same job script runs unchanged; the work maps onto Spark like this:

* the **driver** (this process) lists and filters the inputs (the listing
  is pushed down exactly as for the local executor), splits them into
  ``mappers`` size-balanced partitions and opens **no** data file;
* ``sc.parallelize(partitions, mappers).mapPartitions(map task)``: each
  Spark task streams its files itself (local files, or S3 bodies read with
  boto3 inside the task and decompressed as they arrive; nothing is
  downloaded first) and runs :class:`~telemetry_core.reduce.tasks.MapTask`
  (with the map-side combiner when the job has ``combine``);
* ``partitionBy(reducers, stable_hash)`` is the shuffle: the same reducer
  for the same key as the local executor;
* ``mapPartitionsWithIndex(reduce task)`` runs
  :class:`~telemetry_core.reduce.tasks.ReduceTask`; its sorted lines come
  back to the driver (``toLocalIterator``) and are merged into the one
  ``--output`` file, exactly as the local executor does.

The job script travels as its bytes (checked by the driver, loaded by each
Python worker once), so executors need not see the file.  Tasks build the
engine from the driver's config (``JobSpec.config_origin``), once per Python
worker, for the ``telemetry_reduce_context`` plugins.  Record filters
(``--dedup``'s ledger) are broadcast.  Map-side counts come back in an
accumulator (Spark may count a re-executed task twice; a failed job
reports nothing), reduce-side counts with the reducers' output.

pyspark is optional (``pip install 'telemetry-core[spark]'``); it is
imported only when a job uses this executor.  ``reduce.spark.*`` configures
the session (docs/mapreduce.md shows ``spark-submit`` on a cluster or EMR);
an active session (``spark-submit``, a notebook, tests) is used as it is
and left running.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..interfaces import InputFile, InputSource, JobSpec
from .job import load_job_source
from .local import ExecutorError, merge_sorted, work_directory
from .tasks import READ_ERRORS, JobAborted, MapTask, ReduceTask, TaskStats, balance, plan_job, \
    stable_hash

log = logging.getLogger(__name__)


@dataclass
class SparkPayload:
    """What every task receives (pickled with the task's closure)."""

    job: JobSpec
    script_path: str
    script_source: bytes
    source: InputSource
    filters: Any  # a Broadcast of the cloudpickled filters, or None


class StatsParam:
    """Accumulator parameter merging :class:`TaskStats` (duck-typed ``AccumulatorParam``)."""

    def __init__(self, max_tracebacks: int) -> None:
        self.max_tracebacks = max_tracebacks

    def zero(self, value: TaskStats) -> TaskStats:
        return TaskStats()

    def addInPlace(self, first: TaskStats, second: TaskStats) -> TaskStats:  # noqa: N802 - pyspark's name
        return first.merge(second, self.max_tracebacks)


# --------------------------------------------------------------------------- inside tasks

_ENGINES: dict[Any, Any] = {}
_FILTERS: dict[int, tuple[bytes, list[Any]]] = {}


def worker_engine(origin: tuple[str | None, tuple[str, ...]]) -> Any:
    """The engine of this Python worker, built once from the driver's config and overrides."""
    engine = _ENGINES.get(origin)
    if engine is None:
        from ..engine import Engine

        engine = _ENGINES[origin] = Engine.from_config(origin[0], origin[1], configure_logs=False)
    return engine


def _filters(payload: SparkPayload) -> list[Any]:
    if payload.filters is None:
        return []
    blob = payload.filters.value  # loaded once per worker process, then the same bytes object
    found = _FILTERS.get(id(blob))
    if found is None or found[0] is not blob:
        from pyspark import cloudpickle

        found = _FILTERS[id(blob)] = (blob, cloudpickle.loads(blob))
    return found[1]


def _task_info(phase: str, opened: list[str]) -> dict[str, Any]:
    from pyspark import TaskContext

    context = TaskContext.get()
    return {"phase": phase, "partition": context.partitionId() if context else None,
            "attempt": context.taskAttemptId() if context else None, "pid": os.getpid(), "opened": opened}


def _spark_map(payload: SparkPayload, accumulator: Any, iterator: Iterable[tuple[int, list[InputFile]]]
               ) -> Iterator[tuple[Any, Any]]:
    """One mapper partition: stream and map its files, yield the written pairs."""
    script = load_job_source(payload.script_path, payload.script_source)
    engine = worker_engine(payload.job.config_origin)
    filters = _filters(payload)
    source = payload.source
    decompress = getattr(source, "decompress", None)
    for number, items in iterator:
        pairs: list[tuple[Any, Any]] = []
        opened: list[str] = []
        task = MapTask(script, payload.job, filters=filters, sink=lambda key, value: pairs.append((key, value)),
                       task=number, engine=engine)
        task.setup()
        for item in items:
            try:
                raw = source.open(item)
                opened.append(item.key)
                reader = decompress(item, raw) if decompress is not None else raw
            except READ_ERRORS as exc:
                task.file_error(item, exc)
                continue
            try:
                task.run_file(item, reader)
            finally:
                reader.close()
                raw.close()
            yield from pairs
            pairs.clear()
        task.finish()
        yield from pairs
        task.stats.tasks.append(_task_info("map", opened))
        accumulator.add(task.stats)


def _spark_reduce(payload: SparkPayload, number: int, iterator: Iterable[tuple[Any, Any]]
                  ) -> Iterator[tuple[str, int, Any]]:
    """One reducer partition: ``("L", number, line)`` for each output line, then
    ``("S", number, stats)``."""
    script = load_job_source(payload.script_path, payload.script_source)  # before any value is unpickled
    engine = worker_engine(payload.job.config_origin)
    task = ReduceTask(script, payload.job, task=number, engine=engine)
    task.add(iterator)
    for line in task.run():
        yield ("L", number, line)
    task.stats.tasks.append(_task_info("reduce", []))
    yield ("S", number, task.stats)


# --------------------------------------------------------------------------- the driver


class SparkExecutor:
    """Runs a job on Spark; see the module docstring."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.settings = engine.config.get("reduce.spark") or {}

    def session(self, job: JobSpec) -> tuple[Any, bool]:
        """The active SparkSession, or a new one from ``reduce.spark`` (``True``: we made it)."""
        try:
            from pyspark.sql import SparkSession
        except ImportError:
            raise ConfigError("the spark executor needs pyspark: pip install 'telemetry-core[spark]' "
                              "(or use --executor local)", key="reduce.executor") from None
        from pyspark import SparkContext

        active = SparkSession.getActiveSession()
        if active is not None:
            return active, False
        if SparkContext._active_spark_context is not None:  # running, but not active in this thread
            return SparkSession.builder.getOrCreate(), False
        builder = SparkSession.builder.appName(self.settings.get("app_name") or "telemetry-mapreduce")
        master = self.settings.get("master")
        if master:
            builder = builder.master(master)
        python = self.settings.get("python")
        if python is None and "PYSPARK_GATEWAY_PORT" not in os.environ and "PYSPARK_PYTHON" not in os.environ:
            python = sys.executable  # launched here, not by spark-submit: the workers run this interpreter
        if python:
            # pyspark's SparkContext takes the workers' interpreter from this variable only
            os.environ["PYSPARK_PYTHON"] = python
            builder = builder.config("spark.pyspark.python", python)
        builder = builder.config("spark.ui.showConsoleProgress",
                                 "true" if job.progress and sys.stderr.isatty() else "false")
        for key, value in (self.settings.get("conf") or {}).items():
            builder = builder.config(key, str(value))
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel(self.settings.get("log_level") or "WARN")
        return spark, True

    def run(self, job: JobSpec, inputs: Iterable[InputFile], source: InputSource) -> dict[str, Any]:
        started = time.monotonic()
        plan = plan_job(self.engine, job, inputs)
        items, script, filters, mappers, reducers = (plan.items, plan.script, plan.filters, plan.mappers,
                                                     plan.reducers)
        result: dict[str, Any] = {"executor": "spark", "mappers": mappers, "reducers": reducers}
        stats = TaskStats()
        work = work_directory(job, self.engine)
        try:
            outputs = [work / f"reducer_{r}" for r in range(reducers)]
            if items:
                spark, created = self.session(job)
                try:
                    stats = self._run(spark.sparkContext, job, items, source, script, filters, mappers, reducers,
                                      outputs)
                finally:
                    if created:
                        spark.stop()
            else:
                for path in outputs:
                    path.touch()
            merge_sorted(outputs, job.output)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        result.update(stats.as_dict())
        result["tasks"] = stats.tasks
        result["seconds"] = round(time.monotonic() - started, 3)
        return result

    def _run(self, sc: Any, job: JobSpec, items: list[InputFile], source: InputSource, script: Any,
             filters: list[Any], mappers: int, reducers: int, outputs: list[Any]) -> TaskStats:
        from pyspark import cloudpickle

        payload = SparkPayload(job=job, script_path=script.path, script_source=script.source, source=source,
                               filters=sc.broadcast(cloudpickle.dumps(filters)) if filters else None)
        accumulator = sc.accumulator(TaskStats(), StatsParam(job.max_tracebacks))
        partitions = [(number, group) for number, group in enumerate(balance(items, mappers))]
        mapped = sc.parallelize(partitions, mappers).mapPartitions(
            functools.partial(_spark_map, payload, accumulator))
        reduced = mapped.partitionBy(reducers, stable_hash).mapPartitionsWithIndex(
            functools.partial(_spark_reduce, payload))
        reduce_stats = TaskStats()
        files = [open(path, "wb") for path in outputs]
        try:
            for kind, number, data in reduced.toLocalIterator(prefetchPartitions=True):
                if kind == "L":
                    files[number].write(data.encode("utf-8", "surrogateescape"))
                else:
                    reduce_stats.merge(data, job.max_tracebacks)
        except Exception as exc:  # noqa: BLE001 - Py4JJavaError and friends: translated to one clear error
            raise _translate(exc) from None
        finally:
            for handle in files:
                handle.close()
        return accumulator.value.merge(reduce_stats, job.max_tracebacks)


def _translate(exc: BaseException) -> Exception:
    """A failed Spark job as :class:`JobAborted` (``--fail-fast``) or :class:`ExecutorError`."""
    text = str(exc)
    marker = "JobAborted: "
    if marker in text:
        message = text[text.index(marker) + len(marker):]
        end = message.find("\n\tat ")
        return JobAborted((message[:end] if end >= 0 else message).strip())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    python_error = next((line for line in reversed(lines) if line.split(":", 1)[0].endswith(("Error", "Exception"))
                         and not line.startswith(("org.", "java.", "py4j"))), lines[0] if lines else repr(exc))
    return ExecutorError(f"the Spark job failed: {python_error}")


@hookimpl
def telemetry_config_choices(key: str) -> list[str] | None:
    return ["spark"] if key == "reduce.executor" else None


@hookimpl(trylast=True)
def telemetry_reduce_executor(name: str, engine: Any) -> SparkExecutor | None:
    return SparkExecutor(engine) if name == "spark" else None
