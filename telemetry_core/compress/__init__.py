"""The compress stage: codecs.

Built-in plugins ``compress.codecs`` (:mod:`.codecs_builtin`: xz, gzip,
zstd) and ``compress.lzma`` (:mod:`.lzma_alone`: the original's ``.lzma``
files), both ``telemetry_compress_codec``; :mod:`.bounded_gzip` inflates
untrusted gzip with a bound.
"""
