"""Inflating untrusted gzip with a hard bound on the output (gzip-bomb safe).

A few kilobytes of gzip can inflate to gigabytes.  Both functions here
stop as soon as the total passes ``limit``, so memory stays bounded by the
limit (:func:`inflate`, which keeps the output and inflates each member at
once, at most ``limit + 1`` bytes) or by one :data:`CHUNK` (:func:`check`,
which counts and discards it), and time by the limit.

Multi-member gzip (concatenated streams, valid per RFC 1952) is accepted;
anything after the last member that is not another member is corruption.
"""

from __future__ import annotations

import sys
import zlib

__all__ = ["CHUNK", "GzipError", "check", "inflate"]

#: Largest piece of output inflated at once.
CHUNK = 64 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


class GzipError(ValueError):
    """A gzip body cannot be accepted.

    ``reason`` is ``"corrupt_gzip"`` (not gzip, damaged or cut short) or
    ``"inflated_too_large"`` (inflates past the limit); the message says
    what was found, in one line.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def check(data: bytes, limit: int) -> int:
    """Inflate ``data`` without keeping the output; return the inflated size.

    Raises :class:`GzipError` when ``data`` is not complete, valid gzip or
    inflates to more than ``limit`` bytes.
    """
    total = 0
    for piece in _pieces(data, limit):
        total += len(piece)
    return total


def inflate(data: bytes, limit: int) -> bytes:
    """Return the inflated bytes of ``data`` (at most ``limit`` of them).

    Raises :class:`GzipError` like :func:`check`.
    """
    # One piece for a whole member: the output is kept anyway, and zlib grows its
    # buffer as it goes (nothing of ``limit`` is allocated up front).
    return b"".join(_pieces(data, limit, min(limit + 1, sys.maxsize)))


def _pieces(data: bytes, limit: int, chunk: int = CHUNK):
    """Yield the inflated output in pieces of at most ``chunk`` bytes."""
    if not data.startswith(_GZIP_MAGIC):
        raise GzipError("corrupt_gzip", "body is not gzip (no 1f 8b magic); send it with "
                                        "Content-Encoding: identity or compress it")
    total = 0
    pending = data
    while pending:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            while not inflater.eof:
                piece = inflater.decompress(pending, chunk)
                pending = inflater.unconsumed_tail
                if piece:
                    total += len(piece)
                    if total > limit:
                        raise GzipError("inflated_too_large", f"gzip body inflates to more than {limit} "
                                                              "bytes; send less data per submission")
                    yield piece
                elif not pending:
                    break
        except zlib.error as error:
            raise GzipError("corrupt_gzip", f"gzip body is damaged ({error})") from None
        if not inflater.eof:
            raise GzipError("corrupt_gzip", "gzip body is cut short (the stream does not end)")
        pending = inflater.unused_data
        if pending and not pending.startswith(_GZIP_MAGIC):
            raise GzipError("corrupt_gzip", f"{len(pending)} bytes of garbage after the gzip stream")
