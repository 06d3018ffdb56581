"""Framing of raw spool records: encode ours, decode ours and the node.js framings.

This module is pure: it turns one submission into the bytes of one record
(:func:`encode_record`) and a buffer of concatenated records back into
:class:`SpoolRecord` objects (:func:`decode_records`).  Files, rotation and
fsync live in :mod:`telemetry_core.store.spool.files`.  ``docs/spool-format.md`` is the
byte-by-byte description; keep the two in step.

Our record (format ``spool-v1``), all integers little-endian::

    0  4  magic           89 54 53 52  (b"\\x89TSR")
    4  1  version         1
    5  1  flags           bit 0: a client address is present; other bits 0
    6  2  path_len        uint16, bytes of UTF-8 path
    8  4  body_len        uint32, bytes of body
    12 1  addr_len        uint8, bytes of UTF-8 client address
    13 3  reserved        zero
    16 8  timestamp_ms    uint64, receive time, ms since the Unix epoch
    24 4  record_crc32    CRC-32 of bytes 0..23, then path, address, body
    28 4  header_crc32    CRC-32 of bytes 0..27
    32 .  path, client address, body (exactly as received; gzip stays gzip)

The header CRC lets a reader trust the lengths before it touches the payload
(a corrupted length never makes it read, or allocate, the wrong span); the
record CRC covers header and payload, so any flipped byte is detected.

The original node.js edge wrote two framings without any checksum:

* ``nodejs-v1``: 0x1e, uint16 path_len, uint32 body_len, uint64 ts, path, body;
* ``nodejs-v2``: 0x1e, uint8 ip_len, uint16 path_len, uint32 body_len,
  uint64 ts, ip, path, body.

Detection is per record; see :func:`decode_records` for the rules.
"""

from __future__ import annotations

import enum
import mmap
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from telemetry_core.errors import TelemetryError

MAGIC = b"\x89TSR"
FORMAT_VERSION = 1
FLAG_CLIENT_ADDR = 0x01
KNOWN_FLAGS = FLAG_CLIENT_ADDR
RESERVED = b"\x00\x00\x00"

#: magic, version, flags, path_len, body_len, addr_len, reserved, timestamp_ms
_HEAD = struct.Struct("<4sBBHIB3sQ")
_CRC = struct.Struct("<I")
_CRCS = struct.Struct("<II")
HEADER_SIZE = _HEAD.size + _CRCS.size  # 32
assert _HEAD.size == 24 and HEADER_SIZE == 32

LEGACY_SEPARATOR = 0x1E
_LEGACY_V1 = struct.Struct("<BHIQ")   # separator, path_len, body_len, ts  (15 bytes)
_LEGACY_V2 = struct.Struct("<BBHIQ")  # separator, ip_len, path_len, body_len, ts  (16 bytes)

#: Receive timestamps outside this window make a legacy header implausible:
#: 2000-01-01T00:00:00Z .. 2100-01-01T00:00:00Z.  A header read one byte off
#: lands far outside it (a shifted uint64 is off by a factor of ~256).
LEGACY_TIMESTAMP_RANGE_MS: tuple[int, int] = (946_684_800_000, 4_102_444_800_000)

_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
_ADDRESS_BYTES = re.compile(rb"[\x20-\x7e]*")  # printable ASCII: IPs, "a, b" forwarded lists

#: Anything :func:`decode_records` can read: it needs ``len``, slicing and ``find``.
Buffer = bytes | bytearray | mmap.mmap


class SpoolError(TelemetryError):
    """Something about the raw spool went wrong; the message says what to do."""


class SpoolConfigError(SpoolError):
    """A spool setting (limit, policy, node id, size, age) is not acceptable."""


class SpoolRecordError(SpoolError):
    """One submission cannot be framed: too long, or not encodable.

    ``field`` is ``"path"``, ``"client_addr"``, ``"body"`` or ``"timestamp_ms"``,
    so the edge can answer 414 for a path and 413 for a body.
    """

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        super().__init__(message)


class RecordFormat(enum.StrEnum):
    """Which framing a record was read from."""

    SPOOL_V1 = "spool-v1"
    NODEJS_V1 = "nodejs-v1"
    NODEJS_V2 = "nodejs-v2"


class SkipReason(enum.StrEnum):
    """Why a span of bytes was skipped by the reader (stable metric names)."""

    #: the file ends inside a record: a write cut short by a crash
    TORN_TAIL = "torn_tail"
    #: a record header whose record runs past the end, followed later by good records
    TRUNCATED_RECORD = "truncated_record"
    #: one ``\n`` after the last record (the node.js server left these); harmless
    TRAILING_NEWLINE = "trailing_newline"
    #: our magic, but the header CRC does not match: damaged header (or chance)
    HEADER_CRC_MISMATCH = "header_crc_mismatch"
    #: a valid header, but the CRC over header and payload does not match
    RECORD_CRC_MISMATCH = "record_crc_mismatch"
    #: a valid header declaring a path, address or body over the reader's limits
    LENGTH_OVER_LIMIT = "length_over_limit"
    #: a valid header with an unknown version, flag bit or non-zero reserved byte
    UNSUPPORTED_VERSION = "unsupported_version"
    #: a valid record whose path or client address is not UTF-8
    INVALID_TEXT = "invalid_text"
    #: 0x1e, but lengths, timestamp, path or address are not plausible
    IMPLAUSIBLE_LEGACY_HEADER = "implausible_legacy_header"
    #: bytes that start no record at all
    GARBAGE = "garbage"


@dataclass(frozen=True, slots=True)
class SpoolLimits:
    """Upper bounds on the parts of one record, enforced on write and on read.

    A header that declares more is rejected instead of being trusted, so a
    corrupted length can never make the reader take a huge span.  Readers
    must use limits at least as large as the writers' did.
    """

    max_path_bytes: int = 10 * 1024
    max_client_addr_bytes: int = 255
    max_body_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        for name, ceiling in (("max_path_bytes", 0xFFFF), ("max_client_addr_bytes", 0xFF),
                              ("max_body_bytes", 0xFFFFFFFF)):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= ceiling:
                raise SpoolConfigError(f"spool limit {name}={value!r} is out of range; "
                                       f"use an integer from 0 to {ceiling}")


DEFAULT_LIMITS = SpoolLimits()


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One submission read back from a spool file.

    ``body`` is exactly the bytes received (gzip stays gzip); ``offset`` and
    ``length`` locate the whole framed record in its file.  ``client_addr``
    is ``None`` when none was recorded (always for ``nodejs-v1``).
    """

    path: str
    body: bytes
    timestamp_ms: int
    client_addr: str | None
    offset: int
    length: int
    format: RecordFormat

    @property
    def is_gzip(self) -> bool:
        """True when the body starts with the gzip magic ``1f 8b``."""
        return self.body[:2] == b"\x1f\x8b"


@dataclass(slots=True)
class SkipTally:
    """Skipped spans and bytes for one reason."""

    spans: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class SkippedSpan:
    """A contiguous run of bytes the reader could not use, and why."""

    offset: int
    length: int
    reason: SkipReason


@dataclass(slots=True)
class ReadStats:
    """What a reader returned and what it skipped, by reason.

    A *span* starts where a record was expected and could not be read and
    ends where the next good record starts (or at the end of the file).  A
    single damaged record is one span; so is a run of garbage between two
    records, and a torn tail.
    """

    records: int = 0
    record_bytes: int = 0
    by_format: dict[RecordFormat, int] = field(default_factory=dict)
    skipped: dict[SkipReason, SkipTally] = field(default_factory=dict)
    spans: list[SkippedSpan] = field(default_factory=list)

    @property
    def skipped_bytes(self) -> int:
        """All bytes skipped, whatever the reason."""
        return sum(tally.bytes for tally in self.skipped.values())

    @property
    def damaged(self) -> bool:
        """True when anything other than a harmless trailing newline was skipped."""
        return any(reason is not SkipReason.TRAILING_NEWLINE for reason in self.skipped)

    def count_record(self, record: SpoolRecord) -> None:
        """Add one returned record."""
        self.records += 1
        self.record_bytes += record.length
        self.by_format[record.format] = self.by_format.get(record.format, 0) + 1

    def count_skip(self, offset: int, length: int, reason: SkipReason) -> None:
        """Add one skipped span."""
        tally = self.skipped.setdefault(reason, SkipTally())
        tally.spans += 1
        tally.bytes += length
        self.spans.append(SkippedSpan(offset, length, reason))


# ---------------------------------------------------------------- encoding


def encode_record(path: str, body: bytes | bytearray | memoryview, *, timestamp_ms: int,
                  client_addr: str | None = None,
                  limits: SpoolLimits = DEFAULT_LIMITS) -> bytes:
    """Return the framed ``spool-v1`` record for one submission, ready for one ``write``.

    Raises :class:`SpoolRecordError` when a part is over ``limits`` or the
    path or address cannot be encoded as UTF-8.  An empty string for
    ``client_addr`` is stored as present-but-empty; ``None`` as absent.
    """
    head, body = encode_record_parts(path, body, timestamp_ms=timestamp_ms, client_addr=client_addr, limits=limits)
    return head + body


def encode_record_parts(path: str, body: bytes | bytearray | memoryview, *, timestamp_ms: int,
                        client_addr: str | None = None,
                        limits: SpoolLimits = DEFAULT_LIMITS) -> tuple[bytes, bytes | bytearray | memoryview]:
    """The framed record of :func:`encode_record` as (everything before the body, the body),
    for a gathered write (``os.writev``) that does not copy the body; raises the same errors."""
    path_bytes = _encode_text("path", path, limits.max_path_bytes)
    if client_addr is None:
        flags, addr_bytes = 0, b""
    else:
        flags = FLAG_CLIENT_ADDR
        addr_bytes = _encode_text("client_addr", client_addr, limits.max_client_addr_bytes)
    if len(body) > limits.max_body_bytes:
        raise SpoolRecordError("body", f"body of {len(body)} bytes is over the spool limit of "
                               f"{limits.max_body_bytes}; reject it or raise max_body_bytes")
    if not 0 <= timestamp_ms <= 0xFFFF_FFFF_FFFF_FFFF:
        raise SpoolRecordError("timestamp_ms", f"timestamp_ms {timestamp_ms} does not fit an "
                               "unsigned 64-bit integer; pass milliseconds since the epoch")
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, flags, len(path_bytes), len(body),
                      len(addr_bytes), RESERVED, timestamp_ms)
    head_crc = zlib.crc32(head)
    record_crc = zlib.crc32(body, zlib.crc32(addr_bytes, zlib.crc32(path_bytes, head_crc)))
    record_crc_bytes = _CRC.pack(record_crc)
    header_crc_bytes = _CRC.pack(zlib.crc32(record_crc_bytes, head_crc))
    return b"".join((head, record_crc_bytes, header_crc_bytes, path_bytes, addr_bytes)), body


def _encode_text(field_name: str, text: str, limit: int) -> bytes:
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise SpoolRecordError(field_name, f"{field_name} is not encodable as UTF-8 ({error.reason} "
                               f"at {error.start}); reject the submission") from None
    if len(encoded) > limit:
        raise SpoolRecordError(field_name, f"{field_name} of {len(encoded)} bytes is over the spool "
                               f"limit of {limit}; reject the submission or raise the limit")
    return encoded


# ---------------------------------------------------------------- decoding


def decode_records(buf: Buffer, *, limits: SpoolLimits = DEFAULT_LIMITS, read_legacy: bool = True,
                   legacy_timestamp_range_ms: tuple[int, int] = LEGACY_TIMESTAMP_RANGE_MS,
                   stats: ReadStats | None = None) -> Iterator[SpoolRecord]:
    """Yield every intact record in ``buf``, in order; count what is skipped in ``stats``.

    Detection is per record, by the bytes at the position where a record is
    expected: ``89 54 53 52`` is ours, ``1e`` is node.js framing (tried as
    the variant of the previous node.js record first, ``nodejs-v1`` at the
    start; the other variant if that one is implausible).  When nothing
    valid starts there, the reader scans forward, one byte at a time in
    effect, for the next position where a record *validates*:

    * ours: magic, header CRC, supported version/flags, lengths within
      ``limits``, record inside the buffer, record CRC;
    * node.js: lengths within ``limits`` (path non-empty), timestamp within
      ``legacy_timestamp_range_ms``, record inside the buffer, UTF-8 path
      without control characters, printable-ASCII address, and (only while
      resynchronising) the record must end where another record, a final
      ``\\n`` or the end of the buffer starts.

    The skipped bytes become one span, named after what was wrong at its
    start (:class:`SkipReason`).  A single ``\\n`` at the very end is counted
    as ``trailing_newline``.  ``read_legacy=False`` treats ``1e`` as garbage.
    """
    decoder = _Decoder(buf, limits, read_legacy, legacy_timestamp_range_ms)
    stats = stats if stats is not None else ReadStats()
    size = len(buf)
    offset = 0
    while offset < size:
        attempt = decoder.decode_at(offset, resync=False)
        if isinstance(attempt, SpoolRecord):
            stats.count_record(attempt)
            yield attempt
            offset += attempt.length
            continue
        if attempt is SkipReason.TRAILING_NEWLINE:
            stats.count_skip(offset, size - offset, attempt)
            return
        next_offset, record = decoder.resynchronise(offset + 1)
        reason = attempt
        if reason is SkipReason.TORN_TAIL and record is not None:
            reason = SkipReason.TRUNCATED_RECORD
        stats.count_skip(offset, next_offset - offset, reason)
        if record is None:
            return
        stats.count_record(record)
        yield record
        offset = next_offset + record.length


class _Decoder:
    """Record parsing at a given offset, plus the forward scan used to resynchronise."""

    def __init__(self, buf: Buffer, limits: SpoolLimits, read_legacy: bool,
                 legacy_timestamp_range_ms: tuple[int, int]) -> None:
        self.buf = buf
        self.size = len(buf)
        self.limits = limits
        self.read_legacy = read_legacy
        self.min_ts, self.max_ts = legacy_timestamp_range_ms
        self.legacy_order = (RecordFormat.NODEJS_V1, RecordFormat.NODEJS_V2)
        # cached find() results for the scan: a position, -1 not searched yet, -2 none left
        self._next_magic = -1
        self._next_separator = -1

    # -- dispatch

    def decode_at(self, offset: int, *, resync: bool) -> SpoolRecord | SkipReason:
        """Parse the record starting exactly at ``offset``, or say why there is none."""
        buf = self.buf
        remaining = self.size - offset
        if buf[offset:offset + 4] == MAGIC:
            return self._parse_spool(offset)
        if remaining < len(MAGIC) and MAGIC.startswith(buf[offset:]):
            return SkipReason.TORN_TAIL
        if self.read_legacy and buf[offset] == LEGACY_SEPARATOR:
            return self._parse_legacy_any(offset, resync=resync)
        if remaining == 1 and buf[offset] == 0x0A:
            return SkipReason.TRAILING_NEWLINE
        return SkipReason.GARBAGE

    def resynchronise(self, start: int) -> tuple[int, SpoolRecord | None]:
        """Return the first position at or after ``start`` where a record validates, and it.

        Returns ``(size, None)`` when no record validates before the end.
        """
        position = start
        while True:
            candidate = self._next_candidate(position)
            if candidate < 0:
                return self.size, None
            attempt = self.decode_at(candidate, resync=True)
            if isinstance(attempt, SpoolRecord):
                return candidate, attempt
            position = candidate + 1

    def _next_candidate(self, start: int) -> int:
        """The smallest position >= ``start`` holding our magic or (legacy on) 0x1e; -1 if none."""
        if self._next_magic != -2 and self._next_magic < start:
            found = self.buf.find(MAGIC, start)
            self._next_magic = found if found >= 0 else -2   # -2: none left
        candidates = [self._next_magic] if self._next_magic >= 0 else []
        if self.read_legacy:
            if self._next_separator != -2 and self._next_separator < start:
                found = self.buf.find(b"\x1e", start)
                self._next_separator = found if found >= 0 else -2
            if self._next_separator >= 0:
                candidates.append(self._next_separator)
        return min(candidates) if candidates else -1

    # -- our format

    def _parse_spool(self, offset: int) -> SpoolRecord | SkipReason:
        header = self._valid_spool_header(offset)
        if isinstance(header, SkipReason):
            return header
        version, flags, path_len, body_len, addr_len, reserved, timestamp_ms = header
        if version != FORMAT_VERSION or flags & ~KNOWN_FLAGS or reserved != RESERVED:
            return SkipReason.UNSUPPORTED_VERSION
        if (path_len > self.limits.max_path_bytes or body_len > self.limits.max_body_bytes
                or addr_len > self.limits.max_client_addr_bytes):
            return SkipReason.LENGTH_OVER_LIMIT
        if not flags & FLAG_CLIENT_ADDR and addr_len:
            return SkipReason.UNSUPPORTED_VERSION
        end = offset + HEADER_SIZE + path_len + addr_len + body_len
        if end > self.size:
            return SkipReason.TORN_TAIL
        buf = self.buf
        path_start = offset + HEADER_SIZE
        addr_start = path_start + path_len
        body_start = addr_start + addr_len
        path_bytes = buf[path_start:addr_start]
        addr_bytes = buf[addr_start:body_start]
        body = bytes(buf[body_start:end])  # the one copy of the body
        head_crc = zlib.crc32(buf[offset:offset + _HEAD.size])
        crc = zlib.crc32(body, zlib.crc32(addr_bytes, zlib.crc32(path_bytes, head_crc)))
        if crc != _CRC.unpack_from(buf, offset + _HEAD.size)[0]:
            return SkipReason.RECORD_CRC_MISMATCH
        try:
            path = path_bytes.decode("utf-8")
            client_addr = addr_bytes.decode("utf-8") if flags & FLAG_CLIENT_ADDR else None
        except UnicodeDecodeError:
            return SkipReason.INVALID_TEXT
        return SpoolRecord(path=path, body=body, timestamp_ms=timestamp_ms,
                           client_addr=client_addr, offset=offset, length=end - offset,
                           format=RecordFormat.SPOOL_V1)

    def _valid_spool_header(self, offset: int) -> tuple[int, int, int, int, int, bytes, int] | SkipReason:
        """The header fields after the magic, if the header is complete and its CRC matches."""
        if offset + HEADER_SIZE > self.size:
            return SkipReason.TORN_TAIL
        buf = self.buf
        head = buf[offset:offset + _HEAD.size]
        record_crc, header_crc = _CRCS.unpack_from(buf, offset + _HEAD.size)
        if zlib.crc32(_CRC.pack(record_crc), zlib.crc32(head)) != header_crc:
            return SkipReason.HEADER_CRC_MISMATCH
        return _HEAD.unpack(head)[1:]

    # -- node.js framings

    def _parse_legacy_any(self, offset: int, *, resync: bool) -> SpoolRecord | SkipReason:
        """Try both node.js variants, preferring the one seen last; see :func:`decode_records`."""
        fallback: SpoolRecord | None = None
        reasons: list[SkipReason] = []
        for variant in self.legacy_order:
            attempt = self._parse_legacy(offset, variant)
            if isinstance(attempt, SkipReason):
                reasons.append(attempt)
            elif self._starts_record(offset + attempt.length):
                return self._adopt(attempt)
            elif fallback is None:
                fallback = attempt
        if fallback is not None and not resync:
            return self._adopt(fallback)
        if SkipReason.TORN_TAIL in reasons:
            return SkipReason.TORN_TAIL
        return SkipReason.IMPLAUSIBLE_LEGACY_HEADER

    def _adopt(self, record: SpoolRecord) -> SpoolRecord:
        """Remember ``record``'s variant so the next node.js record tries it first."""
        if record.format is not self.legacy_order[0]:
            self.legacy_order = self.legacy_order[::-1]
        return record

    def _legacy_header(self, offset: int, variant: RecordFormat) -> tuple[int, int, int, int] | SkipReason:
        """``(addr_len, path_len, body_len, timestamp_ms)`` if plausible, else why not."""
        layout = _LEGACY_V1 if variant is RecordFormat.NODEJS_V1 else _LEGACY_V2
        if offset + layout.size > self.size:
            return SkipReason.TORN_TAIL
        if variant is RecordFormat.NODEJS_V1:
            _, path_len, body_len, timestamp_ms = layout.unpack_from(self.buf, offset)
            addr_len = 0
        else:
            _, addr_len, path_len, body_len, timestamp_ms = layout.unpack_from(self.buf, offset)
        limits = self.limits
        if (not 0 < path_len <= limits.max_path_bytes or body_len > limits.max_body_bytes
                or addr_len > limits.max_client_addr_bytes
                or not self.min_ts <= timestamp_ms <= self.max_ts):
            return SkipReason.IMPLAUSIBLE_LEGACY_HEADER
        return addr_len, path_len, body_len, timestamp_ms

    def _parse_legacy(self, offset: int, variant: RecordFormat) -> SpoolRecord | SkipReason:
        header = self._legacy_header(offset, variant)
        if isinstance(header, SkipReason):
            return header
        addr_len, path_len, body_len, timestamp_ms = header
        addr_start = offset + (_LEGACY_V1.size if variant is RecordFormat.NODEJS_V1 else _LEGACY_V2.size)
        path_start = addr_start + addr_len
        body_start = path_start + path_len
        end = body_start + body_len
        if end > self.size:
            return SkipReason.TORN_TAIL
        buf = self.buf
        addr_bytes = buf[addr_start:path_start]
        if not _ADDRESS_BYTES.fullmatch(addr_bytes):
            return SkipReason.IMPLAUSIBLE_LEGACY_HEADER
        try:
            path = buf[path_start:body_start].decode("utf-8")
        except UnicodeDecodeError:
            return SkipReason.IMPLAUSIBLE_LEGACY_HEADER
        if _CONTROL_CHARACTER.search(path):
            return SkipReason.IMPLAUSIBLE_LEGACY_HEADER
        client_addr = addr_bytes.decode("ascii") if variant is RecordFormat.NODEJS_V2 else None
        return SpoolRecord(path=path, body=bytes(buf[body_start:end]), timestamp_ms=timestamp_ms,
                           client_addr=client_addr, offset=offset, length=end - offset, format=variant)

    # -- boundaries

    def _starts_record(self, offset: int) -> bool:
        """True when ``offset`` is the end of the buffer, a final ``\\n``, or a plausible record start.

        A torn record start (a header cut by the end of the buffer) counts as a start.
        """
        size = self.size
        if offset >= size:
            return offset == size
        buf = self.buf
        if offset == size - 1 and buf[offset] == 0x0A:
            return True
        if buf[offset:offset + 4] == MAGIC:
            header = self._valid_spool_header(offset)
            return not isinstance(header, SkipReason) or header is SkipReason.TORN_TAIL
        if size - offset < len(MAGIC) and MAGIC.startswith(buf[offset:]):
            return True
        if self.read_legacy and buf[offset] == LEGACY_SEPARATOR:
            return any(not isinstance(header := self._legacy_header(offset, variant), SkipReason)
                       or header is SkipReason.TORN_TAIL for variant in self.legacy_order)
        return False
