"""``--profile FILE`` for a whole node: every process profiles itself, the command merges.

:func:`profile_option`'s command profiles its own process and sets
``TELEMETRY_PROFILE`` to ``FILE`` in its environment, which every process
it starts inherits (edge workers, processor workers).  Such a process wraps
its work in :func:`profiled` and writes ``FILE.<member>.<pid>.prof`` when it
stops; the command, once its services stopped, writes its own figures to
``FILE.main.<pid>.prof`` and the sum of every process's to ``FILE``
(:func:`merge_profiles`), so ``python -m pstats FILE`` shows the
processor's and the edge handlers' functions next to the parent's.
"""

from __future__ import annotations

import contextlib
import cProfile
import logging
import os
import pstats
from pathlib import Path
from typing import Iterator

__all__ = ["ENVIRONMENT", "merge_profiles", "part_path", "profiled"]

log = logging.getLogger(__name__)

#: The variable that asks a process to profile itself (its value: the node's profile file).
ENVIRONMENT = "TELEMETRY_PROFILE"


def part_path(target: str | os.PathLike[str], member: str) -> Path:
    """Where one process of the node writes its own profile."""
    return Path(f"{os.fspath(target)}.{member}.{os.getpid()}.prof")


@contextlib.contextmanager
def profiled(member: str) -> Iterator[None]:
    """Profile the block when ``TELEMETRY_PROFILE`` is set; write ``<it>.<member>.<pid>.prof``."""
    target = os.environ.get(ENVIRONMENT)
    if not target:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        try:
            profiler.dump_stats(part_path(target, member))
        except OSError as error:
            log.warning("could not write the profile of %s: %s", member, error)


def merge_profiles(target: str | os.PathLike[str]) -> list[Path]:
    """Sum every ``<target>.*.prof`` into ``target``; return the parts merged."""
    parts = sorted(Path(target).parent.glob(Path(target).name + ".*.prof"))
    readable = []
    for part in parts:
        try:
            pstats.Stats(str(part))
        except (OSError, EOFError, TypeError, ValueError) as error:  # a process killed while writing
            log.warning("skipping unreadable profile %s: %s", part, error)
            continue
        readable.append(part)
    if readable:
        stats = pstats.Stats(str(readable[0]))
        for part in readable[1:]:
            stats.add(str(part))
        stats.dump_stats(os.fspath(target))
    return readable
