"""The spool thread: operations run in order, off the event loop, and report their own outcome."""

from __future__ import annotations

import asyncio
import threading

import pytest

from telemetry_core.receive.spool_thread import SpoolThread
from telemetry_core.store.spool.files import SpoolReader, SpoolRecordError, SpoolWriteError, SpoolWriter


def test_appends_run_in_order_in_another_thread_and_close_finishes_the_file(tmp_path):
    writer = SpoolWriter(tmp_path / "spool", "n1")
    threads = set()
    batches = []
    original = writer.append_many

    def append_many(submissions):
        threads.add(threading.get_ident())
        batches.append(len(submissions))
        return original(submissions)

    writer.append_many = append_many

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
    assert sum(batches) == 50 and len(batches) < 50  # appends queued together share one gathered write


def test_appends_and_other_operations_keep_their_order_and_own_outcomes(tmp_path):
    """A batch mixing appends and a rotation: appends before the rotation land in the first file,
    the ones after it in the second; a record over the limits fails alone."""
    from telemetry_core.store.spool.framing import SpoolLimits

    writer = SpoolWriter(tmp_path / "spool", "n1", limits=SpoolLimits(max_path_bytes=10))
    finished = []

    async def run():
        spool = SpoolThread(writer)
        before = [spool.append(f"a{n}", b"x", timestamp_ms=n) for n in range(3)]
        too_long = spool.append("p" * 11, b"x")
        rotation = spool._submit(lambda: finished.append(writer.rotate()), (), {})
        after = [spool.append(f"b{n}", b"x", timestamp_ms=n) for n in range(2)]
        assert all(size > 0 for size in await asyncio.gather(*before, *after))
        with pytest.raises(SpoolRecordError, match="path"):
            await too_long
        await rotation
        finished.append(await spool.close())

    asyncio.run(run())
    assert [[r.path for r in SpoolReader(path)] for path in finished] == [["a0", "a1", "a2"], ["b0", "b1"]]


def test_a_writer_without_append_many_gets_one_append_per_record():
    class Plain:
        def __init__(self):
            self.paths = []

        def append(self, path, body, *, client_addr=None, timestamp_ms=None):
            self.paths.append(path)
            return len(body)

        def close(self):
            return None

    writer = Plain()

    async def main():
        spool = SpoolThread(writer)
        sizes = await asyncio.gather(*(spool.append(f"p{n}", b"x" * n) for n in range(5)))
        await spool.close()
        return sizes

    assert asyncio.run(main()) == [0, 1, 2, 3, 4] and writer.paths == [f"p{n}" for n in range(5)]


def test_an_append_many_that_raises_fails_every_append_of_its_call():
    class Broken:
        def append(self, *args, **kwargs):
            raise AssertionError("not used when append_many exists")

        def append_many(self, submissions):
            raise SpoolWriteError("cannot open a spool file: disk full")

        def close(self):
            return None

    async def main():
        spool = SpoolThread(Broken())
        futures = [spool.append(f"p{n}", b"x") for n in range(3)]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        await spool.close()
        return outcomes

    assert [type(o).__name__ for o in asyncio.run(main())] == ["SpoolWriteError"] * 3


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


def test_an_append_after_close_fails_at_once(tmp_path):
    from telemetry_core.store.spool.files import SpoolError

    async def main():
        spool = SpoolThread(SpoolWriter(tmp_path / "spool", "n1"))
        await spool.close()
        with pytest.raises(SpoolError, match="closed"):
            await spool.append("late", b"x")

    asyncio.run(main())
