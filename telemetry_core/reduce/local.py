"""Built-in plugin: the ``local`` MapReduce executor (processes on this machine).

How a job runs (docs/mapreduce.md has the user's view):

1. The input files are split into ``mappers`` size-balanced partitions
   (largest file first, each into the partition with the fewest bytes).
2. **Local files are opened by this (the parent) process** before any
   mapper starts, and the mappers, forked from it, read those open files.
   So a file the listing returned is read in full even if it is deleted
   (retention) or replaced afterwards: the race with the compressor that
   the original server had is gone.  (Published files never change, and
   temporary files of a publish in progress are never listed.)  If there
   are more files than open-file slots, the rest are opened by the mapper
   that reads them.  S3 objects are streamed by the mapper itself (an HTTP
   stream cannot be handed to another process); a missing object is a
   counted file error.
3. Each mapper runs :class:`~telemetry_core.reduce.tasks.MapTask` over
   its files: records are decompressed as they are read (S3 bodies are
   never written to disk) and every pair ``map`` writes goes, by
   :func:`~telemetry_core.reduce.tasks.partition_of` its key, to one of
   ``reducers`` files ``mapper_<m>_<r>`` in the work directory.  Every
   mapper creates all of its files before it reads anything, so every
   mapper x reducer file exists, empty or not.
4. Each reducer reads ``mapper_*_<r>``, runs
   :class:`~telemetry_core.reduce.tasks.ReduceTask` and writes its lines,
   sorted, to ``reducer_<r>``; the parent merges those into the one
   ``--output`` file (written beside it, then renamed into place).
5. The work directory (``reduce.work_dir``, by default
   ``<data_dir>/mapreduce/``, one ``job-*`` directory per run) is removed at
   the end, also after a failure.

A progress bar (files, bytes, records, rate) is drawn on stderr when it is
a terminal; mappers report progress through a queue.  A mapper or reducer
that dies (killed, ``os._exit`` in job code) fails the job with its exit
code; ``--fail-fast`` stops every process at the first error.
"""

from __future__ import annotations

import heapq
import logging
import multiprocessing
import os
import pickle
import queue
import resource
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import click

from ..errors import TelemetryError
from ..hookspecs import hookimpl
from ..interfaces import InputFile, InputSource, JobSpec
from .job import JobScript
from .tasks import (READ_ERRORS, JobAborted, MapTask, ReduceTask, TaskStats, balance, partition_of,
                              plan_job)

log = logging.getLogger(__name__)

#: Pairs a mapper buffers per reducer before it appends them to that reducer's file.
BATCH_PAIRS = 1024
#: Open files kept free for everything else when input files are opened in the parent.
SPARE_FILES = 256


class ExecutorError(TelemetryError):
    """A mapper or reducer process failed outside the job's code (it died, or a bug)."""


def work_directory(job: JobSpec, engine: Any) -> Path:
    """A fresh ``job-*`` directory under ``job.work_dir`` (or ``reduce.work_dir``,
    or ``<data_dir>/mapreduce``)."""
    base = job.work_dir or engine.config.get("reduce.work_dir") or engine.config.data_dir / "mapreduce"
    Path(base).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="job-", dir=base))


def merge_sorted(paths: Sequence[Path], output: str | os.PathLike[str]) -> int:
    """Merge files of sorted lines into ``output`` (atomically); returns the line count."""
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with ExitStack() as stack, open(temporary, "wb") as out:
            sources = [stack.enter_context(open(path, "rb")) for path in paths]
            for line in heapq.merge(*sources):
                out.write(line)
                count += 1
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return count


def write_lines(path: Path, lines: Iterable[str]) -> None:
    with open(path, "wb") as out:
        for line in lines:
            out.write(line.encode("utf-8", "surrogateescape"))


# --------------------------------------------------------------------------- mapper side


class PartitionWriter:
    """A mapper's ``mapper_<m>_<r>`` files, all created at once; pairs are pickled in batches.

    A pair that cannot be pickled is dropped and reported to ``on_error(key, exc)``.
    """

    def __init__(self, directory: Path, mapper: int, reducers: int,
                 on_error: Callable[[Any, BaseException], None]) -> None:
        self.paths = [directory / f"mapper_{mapper}_{r}" for r in range(reducers)]
        self.files = [open(path, "wb") for path in self.paths]
        self.buffers: list[list[tuple[Any, Any]]] = [[] for _ in range(reducers)]
        self.reducers = reducers
        self.on_error = on_error

    def write(self, key: Any, value: Any) -> None:
        reducer = partition_of(key, self.reducers)
        buffer = self.buffers[reducer]
        buffer.append((key, value))
        if len(buffer) >= BATCH_PAIRS:
            self._flush(reducer)

    def _flush(self, reducer: int) -> None:
        pairs = self.buffers[reducer]
        if not pairs:
            return
        self.buffers[reducer] = []
        try:
            data = pickle.dumps(pairs, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError):
            kept = []
            for key, value in pairs:
                try:
                    pickle.dumps((key, value), protocol=pickle.HIGHEST_PROTOCOL)
                except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as exc:
                    self.on_error(key, exc)
                    continue
                kept.append((key, value))
            data = pickle.dumps(kept, protocol=pickle.HIGHEST_PROTOCOL)
        self.files[reducer].write(data)

    def close(self) -> None:
        for reducer in range(self.reducers):
            self._flush(reducer)
        for handle in self.files:
            handle.close()


def read_partition(path: Path) -> Iterable[tuple[Any, Any]]:
    """The pairs of one ``mapper_<m>_<r>`` file."""
    with open(path, "rb") as handle:
        while True:
            try:
                batch = pickle.load(handle)
            except EOFError:
                return
            yield from batch


def _mapper_main(number: int, items: list[InputFile], handles: dict[str, Any], work: Path, reducers: int,
                 script: JobScript, job: JobSpec, filters: list[Any], source: InputSource, engine: Any,
                 events: Any) -> None:
    """A mapper process: map ``items`` into ``mapper_<number>_*``; report on ``events``."""
    try:
        mine = {item.key for item in items}
        for key, handle in handles.items():
            if key not in mine and not isinstance(handle, BaseException):
                handle.close()
        task: MapTask | None = None

        def unpicklable(key: Any, exc: BaseException) -> None:
            assert task is not None
            task.stats.map_errors += 1
            task.user_error(f"map() wrote a pair that cannot be pickled (key {key!r})", exc, task._current or "map")

        writer = PartitionWriter(work, number, reducers, unpicklable)
        task = MapTask(script, job, filters=filters, sink=writer.write, task=number, engine=engine,
                       progress=lambda files, records, size: events.put(("progress", files, records, size)))
        task.setup()
        decompress = getattr(source, "decompress", None)
        for item in items:
            raw = handles.get(item.key)
            try:
                if isinstance(raw, BaseException):
                    raise raw
                if raw is None:
                    raw = source.open(item)
                reader = decompress(item, raw) if decompress is not None else raw
            except READ_ERRORS as exc:
                task.file_error(item, exc)
                continue
            position = raw.tell if raw.seekable() else None
            try:
                task.run_file(item, reader, position)
            finally:
                reader.close()
                raw.close()
        task.finish()
        writer.close()
        events.put(("done", "map", number, task.stats))
    except JobAborted as exc:
        events.put(("abort", "map", number, str(exc)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the job
        events.put(("crash", "map", number, traceback.format_exc()))


def _reducer_main(number: int, mappers: int, work: Path, script: JobScript, job: JobSpec, engine: Any,
                  events: Any) -> None:
    """A reducer process: reduce ``mapper_*_<number>`` into ``reducer_<number>``."""
    try:
        task = ReduceTask(script, job, task=number, engine=engine)
        for mapper in range(mappers):
            task.add(read_partition(work / f"mapper_{mapper}_{number}"))
        write_lines(work / f"reducer_{number}", task.run())
        events.put(("done", "reduce", number, task.stats))
    except JobAborted as exc:
        events.put(("abort", "reduce", number, str(exc)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the job
        events.put(("crash", "reduce", number, traceback.format_exc()))


# --------------------------------------------------------------------------- progress


class ProgressBar:
    """A click progress bar over the compressed bytes of the inputs, on stderr.

    Shows files done, records and the record rate next to the bar.
    """

    def __init__(self, total_files: int, total_bytes: int) -> None:
        self.total_files = total_files
        self.files = 0
        self.records = 0
        self.started = time.monotonic()
        self._bar = click.progressbar(length=max(total_bytes, 1), label="mapping", file=sys.stderr,
                                      show_eta=True, show_percent=True, item_show_func=lambda text: text)
        self._bar.__enter__()

    def update(self, files: int, records: int, size: int) -> None:
        self.files += files
        self.records += records
        elapsed = max(time.monotonic() - self.started, 1e-6)
        status = (f"{self.files}/{self.total_files} files  {self.records:,} records  "
                  f"{self.records / elapsed:,.0f} rec/s")
        self._bar.update(size, current_item=status)

    def close(self) -> None:
        self._bar.__exit__(None, None, None)


def show_progress(job: JobSpec) -> bool:
    """A bar only when asked for and stderr is a terminal (never into a pipe or file)."""
    return bool(job.progress) and sys.stderr.isatty()


# --------------------------------------------------------------------------- the executor


class LocalExecutor:
    """Runs a job with ``job.mappers`` mapper and ``job.reducers`` reducer processes."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def run(self, job: JobSpec, inputs: Iterable[InputFile], source: InputSource) -> dict[str, Any]:
        started = time.monotonic()
        plan = plan_job(self.engine, job, inputs)
        items, script, filters, mappers, reducers = (plan.items, plan.script, plan.filters, plan.mappers,
                                                     plan.reducers)
        partitions = balance(items, mappers) if mappers else []
        context = multiprocessing.get_context("fork")
        stats = TaskStats()
        work = work_directory(job, self.engine)
        handles: dict[str, Any] = {}
        result: dict[str, Any] = {"executor": "local", "mappers": mappers, "reducers": reducers}
        try:
            handles = open_in_parent(items, source)
            events = context.Queue()
            bar = ProgressBar(len(items), sum(item.size for item in items)) if show_progress(job) and items else None
            try:
                processes = [context.Process(
                    target=_mapper_main, name=f"telemetry-mapper-{m}",
                    args=(m, partitions[m], handles, work, reducers, script, job, filters, source, self.engine,
                          events)) for m in range(mappers)]
                for process in processes:
                    process.start()
                for handle in handles.values():
                    if not isinstance(handle, BaseException):
                        handle.close()
                handles = {}
                self._wait(processes, events, stats, bar, job)
            finally:
                if bar is not None:
                    bar.close()
            result["map_seconds"] = round(time.monotonic() - started, 3)
            result["partition_files"] = check_partition_files(work, mappers, reducers)
            reduce_started = time.monotonic()
            processes = [context.Process(target=_reducer_main, name=f"telemetry-reducer-{r}",
                                         args=(r, mappers, work, script, job, self.engine, events))
                         for r in range(reducers)]
            for process in processes:
                process.start()
            self._wait(processes, events, stats, None, job)
            merge_sorted([work / f"reducer_{r}" for r in range(reducers)], job.output)
            result["reduce_seconds"] = round(time.monotonic() - reduce_started, 3)
        finally:
            for handle in handles.values():
                if not isinstance(handle, BaseException):
                    handle.close()
            shutil.rmtree(work, ignore_errors=True)
        result.update(stats.as_dict())
        result["seconds"] = round(time.monotonic() - started, 3)
        return result

    def _wait(self, processes: list[Any], events: Any, stats: TaskStats, bar: ProgressBar | None,
              job: JobSpec) -> None:
        """Collect events until every process reported; fail the job if one dies or aborts."""
        pending = set(range(len(processes)))
        failure: Exception | None = None
        suspects: dict[int, int] = {}
        while pending and failure is None:
            try:
                event = events.get(timeout=0.2)
            except queue.Empty:
                for number in sorted(pending):
                    process = processes[number]
                    if process.exitcode is not None:  # gone without a word: give its last event a moment
                        suspects[number] = suspects.get(number, 0) + 1
                        if suspects[number] >= 3:
                            failure = ExecutorError(f"{process.name} died with exit code {process.exitcode} "
                                                    f"before it finished (killed, out of memory, or os._exit "
                                                    f"in the job's code?)")
                continue
            kind = event[0]
            if kind == "progress":
                if bar is not None:
                    bar.update(*event[1:])
            elif kind == "done":
                stats.merge(event[3], job.max_tracebacks)
                pending.discard(event[2])
            elif kind == "abort":
                failure = JobAborted(event[3])
            else:
                failure = ExecutorError(f"{event[1]} task {event[2]} failed: {event[3].strip().splitlines()[-1]}\n"
                                        f"{event[3]}")
        if failure is not None:
            for process in processes:
                if process.is_alive():
                    process.terminate()
            for process in processes:
                process.join()
            raise failure
        for process in processes:
            process.join()


def open_in_parent(items: Sequence[InputFile], source: InputSource) -> dict[str, Any]:
    """Open local input files now (see the module docstring): key -> open file, or the
    exception opening it raised (the mapper counts it as a file error)."""
    if not getattr(source, "local_files", False) or not items:
        return {}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = len(items) + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
            soft = new_soft
        except (ValueError, OSError) as exc:
            log.info("could not raise the open-file limit: %s", exc)
    budget = len(items) if soft == resource.RLIM_INFINITY else max(0, soft - SPARE_FILES)
    if budget < len(items):
        log.info("%d input files, %d open-file slots: the mappers open the other %d themselves",
                 len(items), budget, len(items) - budget)
    handles: dict[str, Any] = {}
    for item in items[:budget]:
        try:
            handles[item.key] = source.open(item)
        except OSError as exc:
            handles[item.key] = exc
    return handles


def check_partition_files(work: Path, mappers: int, reducers: int) -> list[list[int]]:
    """``[mapper, reducer, bytes]`` of every mapper x reducer file; a missing one is an error."""
    found = []
    for mapper in range(mappers):
        for reducer in range(reducers):
            path = work / f"mapper_{mapper}_{reducer}"
            if not path.is_file():
                raise ExecutorError(f"mapper {mapper} left no file for reducer {reducer} ({path})")
            found.append([mapper, reducer, path.stat().st_size])
    return found


@hookimpl
def telemetry_config_choices(key: str) -> list[str] | None:
    return ["local"] if key == "reduce.executor" else None


@hookimpl(trylast=True)
def telemetry_reduce_executor(name: str, engine: Any) -> LocalExecutor | None:
    return LocalExecutor(engine) if name == "local" else None
