"""Built-in plugin: the ``lzma`` codec, for archives of the original telemetry-server.

The original server stored its logs as ``.lzma`` files in the legacy
"LZMA alone" format (``<buildid>.<date>.v2.log.<uuid>.lzma``); with this
codec ``telemetry mapreduce`` reads such an archive as it is.  Reading
accepts xz too; writing (``compress.codec: lzma``) produces LZMA alone.
"""

from __future__ import annotations

import lzma
from typing import IO

from ..hookspecs import hookimpl

CHUNK = 1 << 20


class LzmaAloneCodec:
    """The legacy ``.lzma`` format via the standard library; ``level`` is the preset (0-9)."""

    name = "lzma"
    suffix = "lzma"
    aliases = ("lzma",)
    levels = range(0, 10)

    def compress(self, source: IO[bytes], target: IO[bytes], level: int) -> None:
        with lzma.LZMAFile(target, "wb", format=lzma.FORMAT_ALONE, preset=level) as compressed:
            while chunk := source.read(CHUNK):
                compressed.write(chunk)

    def open_reader(self, source: IO[bytes]) -> IO[bytes]:
        return lzma.LZMAFile(source, "rb", format=lzma.FORMAT_AUTO)


@hookimpl
def telemetry_config_choices(key: str) -> list[str] | None:
    return list(LzmaAloneCodec.aliases) if key == "compress.codec" else None


@hookimpl(trylast=True)
def telemetry_compress_codec(name: str) -> LzmaAloneCodec | None:
    return LzmaAloneCodec() if name in LzmaAloneCodec.aliases else None
