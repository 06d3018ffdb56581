"""Keep Python's cyclic garbage collector out of the way while a chunk of records is processed.

A chunk holds :data:`~telemetry_core.store.process.processor.DEDUP_CHUNK`
decoded and converted payloads alive at once -- hundreds of thousands of
dicts and lists.  Left on, the collector starts a young-generation pass
every 700 allocations and, every tenth, a pass over everything the chunk
holds: measured on 77 KB Firefox pings, a quarter of the processor's time,
to find nothing (decoded JSON has no reference cycles; reference counting
frees a record when its chunk is done).

:func:`paused_collector` turns the automatic collection off for one chunk
and back on after it (only if it was on: a process that turned it off
keeps it off), then runs one young-generation pass over what the chunk
left: a cycle made while processing (an exception and its traceback, say)
is freed as soon as its chunk is done, so memory stays flat however large
the file.  (Without that pass the collector would wait for 700 *net* new
objects, and a chunk frees nearly all it allocates.)  Threads share the
collector: a count of the chunks in progress turns it back on only when the
last one ends.
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
#: Chunks in progress in this process, and whether the collector was on before the first.
_state = {"depth": 0, "was_enabled": False}


@contextmanager
def paused_collector() -> Iterator[None]:
    """Automatic cyclic garbage collection off inside the block (see the module docstring)."""
    with _lock:
        if _state["depth"] == 0:
            _state["was_enabled"] = gc.isenabled()
            gc.disable()
        _state["depth"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0 and _state["was_enabled"]:
                gc.enable()
                gc.collect(0)
