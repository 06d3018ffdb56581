"""The processor keeps the cyclic garbage collector off while it works on a chunk, and only then."""

from __future__ import annotations

import gc
import weakref

import pytest

from telemetry_core import hookimpl
from telemetry_core.store.process.processor import DEDUP_CHUNK, Processor

from process_helpers import fixture_records, processor_engine, write_spool


class _Cycle:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


class CollectorWatch:
    """Notes whether the collector is on while records are converted, and leaves a cycle behind each time."""

    def __init__(self) -> None:
        self.enabled_while_converting: set[bool] = set()
        self.cycles: list[weakref.ref] = []

    @hookimpl
    def telemetry_convert_payload(self, record, spec):
        self.enabled_while_converting.add(gc.isenabled())
        self.cycles.append(weakref.ref(_Cycle()))
        return None


@pytest.fixture
def restore_collector():
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_collector_is_off_while_a_chunk_is_processed_and_on_again_after(tmp_path, restore_collector):
    gc.enable()
    watch = CollectorWatch()
    write_spool(tmp_path, fixture_records(3))
    processor = Processor(processor_engine(tmp_path, watch, overrides=["dedup.backend=none"]))
    assert processor.run_once().records_valid == 3
    processor.close()
    assert watch.enabled_while_converting == {False}
    assert gc.isenabled()


def test_a_process_that_turned_the_collector_off_keeps_it_off(tmp_path, restore_collector):
    gc.disable()
    write_spool(tmp_path, fixture_records(2))
    processor = Processor(processor_engine(tmp_path, overrides=["dedup.backend=none"]))
    assert processor.run_once().records_valid == 2
    processor.close()
    assert not gc.isenabled()


def test_cycles_made_while_processing_are_freed_chunk_by_chunk(tmp_path, restore_collector):
    """Memory stays flat in the file's size: what a chunk leaves in cycles is
    collected after it, not once at the end of the file."""
    gc.enable()
    gc.collect()
    watch = CollectorWatch()
    write_spool(tmp_path, fixture_records(4 * DEDUP_CHUNK))
    processor = Processor(processor_engine(tmp_path, watch, overrides=["dedup.backend=none"]))
    assert processor.run_once().records_valid == 4 * DEDUP_CHUNK
    processor.close()
    alive = [index for index, ref in enumerate(watch.cycles) if ref() is not None]
    assert alive == []
