"""Built-in codecs: round trips, concatenated streams, bounded memory, errors."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import pytest

from telemetry_core.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLE = b"line 1\nline 2\nline 3\nanother \tline\nline 5\n"


@pytest.fixture
def engine(pm, make_engine):
    import telemetry_core.compress.codecs_builtin as codecs

    pm.register(codecs)
    return make_engine()


@pytest.mark.parametrize("name,suffix", [("xz", "xz"), ("gzip", "gz"), ("gz", "gz"), ("zstd", "zst"),
                                         ("zst", "zst")])
def test_round_trip_and_names(engine, name, suffix):
    codec = engine.codec(name=name)
    assert codec.suffix == suffix
    packed = io.BytesIO()
    codec.compress(io.BytesIO(SAMPLE * 100), packed, 1)
    assert 0 < len(packed.getvalue()) < len(SAMPLE) * 100
    assert codec.open_reader(io.BytesIO(packed.getvalue())).read() == SAMPLE * 100


@pytest.mark.parametrize("fixture,name", [("compressed_sample__test.txt.xz", "xz"),
                                          ("compressed_sample__test.txt.gz", "gz")])
def test_reads_the_original_projects_files(engine, fixture, name):
    with (FIXTURES / fixture).open("rb") as handle:
        assert engine.codec(name=name).open_reader(handle).read() == SAMPLE


@pytest.mark.parametrize("name", ["xz", "gzip", "zstd"])
def test_concatenated_streams_read_as_one(engine, name):
    codec = engine.codec(name=name)
    packed = io.BytesIO()
    for part in (b"first\n", b"second\n", b"third\n"):
        codec.compress(io.BytesIO(part), packed, 0)
    assert codec.open_reader(io.BytesIO(packed.getvalue())).read() == b"first\nsecond\nthird\n"


class Endless(io.RawIOBase):
    """``size`` bytes of log-like lines, produced on demand (never held in memory)."""

    def __init__(self, size):
        self.left = size
        self.line = b"0123456789abcdef\t{\"ver\": 2, \"histograms\": {}}\n"

    def readable(self):
        return True

    def readinto(self, buffer):
        count = min(len(buffer), self.left)
        reps = self.line * (count // len(self.line) + 1)
        buffer[:count] = reps[:count]
        self.left -= count
        return count


class Sink(io.RawIOBase):
    def __init__(self):
        self.size = 0

    def writable(self):
        return True

    def write(self, data):
        self.size += len(data)
        return len(data)


@pytest.mark.parametrize("name", ["xz", "gzip", "zstd"])
def test_memory_stays_bounded_for_large_inputs(engine, name):
    codec = engine.codec(name=name)
    tracemalloc.start()
    try:
        codec.compress(io.BufferedReader(Endless(64 << 20)), Sink(), 0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{name} peaked at {peak} bytes compressing 64 MiB"


def test_corrupt_input_raises_a_clear_error(engine):
    with pytest.raises(Exception) as caught:
        engine.codec(name="xz").open_reader(io.BytesIO(b"\xfd7zXZ\x00garbage" * 10)).read()
    assert "corrupt" in str(caught.value).lower() or "format" in str(caught.value).lower()


def test_unknown_codec(engine):
    with pytest.raises(ConfigError, match="compress.codec: no installed plugin provides codec 'lz5'"):
        engine.codec(name="lz5")


def test_missing_zstandard_package_is_named(engine, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_zstandard(name, *args, **kwargs):
        if name == "zstandard":
            raise ImportError("No module named 'zstandard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_zstandard)
    with pytest.raises(ConfigError, match=r"pip install zstandard"):
        engine.codec(name="zstd")


def test_zstd_is_the_default_codec_and_reads_line_by_line():
    import io

    from telemetry_core.compress.codecs_builtin import ZstdCodec
    from telemetry_core.config.keys import CORE_SCHEMA

    assert CORE_SCHEMA.fields["compress"].fields["codec"].default == "zstd"
    packed = io.BytesIO()
    ZstdCodec().compress(io.BytesIO(b"a\tb\n" * 3), packed, 0)
    assert list(ZstdCodec().open_reader(io.BytesIO(packed.getvalue() * 2))) == [b"a\tb\n"] * 6
