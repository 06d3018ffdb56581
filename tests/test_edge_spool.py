"""The spool thread: operations run in order, off the event loop, and report their own outcome."""

from __future__ import annotations

import asyncio
import threading

import pytest

from telemetry_core.edge_spool import SpoolThread
from telemetry_core.spool import SpoolReader, SpoolWriteError, SpoolWriter


def test_appends_run_in_order_in_another_thread_and_close_finishes_the_file(tmp_path):
    writer = SpoolWriter(tmp_path / "spool", "n1")
    threads = set()
    original = writer.append

    def append(*args, **kwargs):
        threads.add(threading.get_ident())
        return original(*args, **kwargs)

    writer.append = append

    async def main():
        spool = SpoolThread(writer)
        sizes = await asyncio.gather(*(spool.append(f"id-{n}", b"{}", timestamp_ms=n) for n in range(50)))
        await spool.poll()
        finished = await spool.close()
        assert await spool.close() is None  # twice is harmless
        return sizes, finished

    sizes, finished = asyncio.run(main())
    assert all(size > 32 for size in sizes)
    assert threads and threading.get_ident() not in threads
    assert [r.path for r in SpoolReader(finished)] == [f"id-{n}" for n in range(50)]


def test_a_failing_append_fails_only_its_own_future():
    class Flaky:
        def __init__(self):
            self.calls = 0

        def append(self, path, body, **kwargs):
            self.calls += 1
            if path == "bad":
                raise SpoolWriteError("disk full; free space")
            return len(body)

        def poll(self):
            return None

        def close(self):
            return "closed"

    async def main():
        spool = SpoolThread(Flaky())
        good = spool.append("good", b"abc")
        bad = spool.append("bad", b"abc")
        after = spool.append("after", b"abcd")
        assert await good == 3
        with pytest.raises(SpoolWriteError, match="disk full"):
            await bad
        assert await after == 4
        assert await spool.close() == "closed"

    asyncio.run(main())
