"""Built-in plugin: the compression codecs zstd (default), xz and gzip.

Every codec streams in fixed-size chunks, so memory stays bounded whatever
the file size, and reads concatenated streams/members/frames (files that
were appended to, or written in pieces, decompress as one).  zstd (the
``zstandard`` package, a core dependency) was chosen as the default by
measurement (docs/storage.md, Choosing a codec); xz stays supported for the
original project's tools.  ``zstandard`` is imported when a zstd codec is
made, not with this module.
"""

from __future__ import annotations

import gzip
import io
import lzma
from typing import IO

from ..errors import ConfigError
from ..hookspecs import hookimpl

CHUNK = 1 << 20


def _copy(source: IO[bytes], target: IO[bytes]) -> None:
    while True:
        chunk = source.read(CHUNK)
        if not chunk:
            return
        target.write(chunk)


class XzCodec:
    """xz via the standard library; ``level`` is the preset (0-9)."""

    name = "xz"
    suffix = "xz"
    aliases = ("xz", "lzma2")
    levels = range(0, 10)

    def compress(self, source: IO[bytes], target: IO[bytes], level: int) -> None:
        with lzma.LZMAFile(target, "wb", format=lzma.FORMAT_XZ, preset=level) as compressed:
            _copy(source, compressed)

    def open_reader(self, source: IO[bytes]) -> IO[bytes]:
        return lzma.LZMAFile(source, "rb")  # reads concatenated .xz streams


class GzipCodec:
    """gzip; ``level`` 1-9 (0 is stored as the fastest level, 1)."""

    name = "gzip"
    suffix = "gz"
    aliases = ("gzip", "gz")
    levels = range(0, 10)

    def compress(self, source: IO[bytes], target: IO[bytes], level: int) -> None:
        with gzip.GzipFile(fileobj=target, mode="wb", compresslevel=max(level, 1), mtime=0) as compressed:
            _copy(source, compressed)

    def open_reader(self, source: IO[bytes]) -> IO[bytes]:
        return gzip.GzipFile(fileobj=source, mode="rb")  # reads concatenated members


class ZstdCodec:
    """zstd via the ``zstandard`` package; ``level`` 1-22 (0 = :data:`DEFAULT_LEVEL`)."""

    #: The level for ``compress.level: 0``: on converted v2 data zstd -1 is smaller than
    #: xz -0 at ~12x its speed (docs/storage.md, Choosing a codec).
    DEFAULT_LEVEL = 1
    name = "zstd"
    suffix = "zst"
    aliases = ("zstd", "zst")
    levels = range(0, 23)

    def __init__(self) -> None:
        import zstandard  # imported here: only commands that compress or read zstd pay for it

        self._zstd = zstandard

    def compress(self, source: IO[bytes], target: IO[bytes], level: int) -> None:
        compressor = self._zstd.ZstdCompressor(level=level or self.DEFAULT_LEVEL)
        with compressor.stream_writer(target, closefd=False) as compressed:
            _copy(source, compressed)

    def open_reader(self, source: IO[bytes]) -> IO[bytes]:
        reader = self._zstd.ZstdDecompressor().stream_reader(source, read_across_frames=True, closefd=False)
        return io.BufferedReader(reader, CHUNK)  # lines and iteration, which zstandard's reader lacks


@hookimpl
def telemetry_config_choices(key: str) -> list[str] | None:
    if key != "compress.codec":
        return None
    return [alias for codec_class in (XzCodec, GzipCodec, ZstdCodec) for alias in codec_class.aliases]


@hookimpl(trylast=True)
def telemetry_compress_codec(name: str) -> XzCodec | GzipCodec | ZstdCodec | None:
    for codec_class in (XzCodec, GzipCodec):
        if name in codec_class.aliases:
            return codec_class()
    if name in ZstdCodec.aliases:
        try:
            return ZstdCodec()
        except ImportError:
            raise ConfigError("codec zstd needs the zstandard package (a dependency of telemetry-core): "
                              "pip install zstandard",
                              key="compress.codec") from None
    return None
