"""The raw spool: record framing, the legacy node.js framings, writer lifecycle, orphans."""

from __future__ import annotations

import gzip
import multiprocessing
import os
import random
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest

from telemetry_core.store.spool import files as spool_module
from telemetry_core.errors import TelemetryError
from telemetry_core.store.spool.files import (
    FINISHED_DIR_NAME,
    OPEN_DIR_NAME,
    FsyncPolicy,
    SpoolFileName,
    SpoolReader,
    SpoolWriteError,
    SpoolWriter,
    finish_orphans,
    list_finished_files,
    validate_node_id,
)
from telemetry_core.store.spool.framing import (
    HEADER_SIZE,
    MAGIC,
    ReadStats,
    RecordFormat,
    SkipReason,
    SpoolConfigError,
    SpoolError,
    SpoolLimits,
    SpoolRecordError,
    decode_records,
    encode_record,
    encode_record_parts,
)

FIXTURES = Path(__file__).parent / "fixtures"
TELEMETRY1_LOG = FIXTURES / "payload_v1_packed_log__telemetry1.log"
UNICODE_PACKED = FIXTURES / "payload_v4_unified_packed_log__unicode.v1.packed"
TS = 1_700_000_000_123


def decode(buf: bytes, **kwargs) -> tuple[list, ReadStats]:
    stats = ReadStats()
    return list(decode_records(buf, stats=stats, **kwargs)), stats


def legacy_v1(path: str, body: bytes, ts: int = TS) -> bytes:
    raw_path = path.encode()
    return struct.pack("<BHIQ", 0x1E, len(raw_path), len(body), ts) + raw_path + body


def legacy_v2(ip: str, path: str, body: bytes, ts: int = TS) -> bytes:
    raw_path, raw_ip = path.encode(), ip.encode()
    return struct.pack("<BBHIQ", 0x1E, len(raw_ip), len(raw_path), len(body), ts) + raw_ip + raw_path + body


def small_records(count: int = 5) -> list[bytes]:
    return [encode_record(f"uuid-{i}/saved-session/Firefox/23.0/release/2013", bytes([i]) * (10 + i),
                          timestamp_ms=TS + i, client_addr=f"10.0.0.{i}" if i % 2 else None)
            for i in range(count)]


def crafted_record(*, version: int = 1, flags: int = 0, path: bytes = b"p", addr: bytes = b"",
                   body: bytes = b"x", path_len: int | None = None, body_len: int | None = None,
                   reserved: bytes = b"\0\0\0") -> bytes:
    """A spool-v1 record with valid CRCs but any header values (what encode_record refuses to make)."""
    head = struct.pack("<4sBBHIB3sQ", MAGIC, version, flags, len(path) if path_len is None else path_len,
                       len(body) if body_len is None else body_len, len(addr), reserved, TS)
    record_crc = struct.pack("<I", zlib.crc32(head + path + addr + body))
    return head + record_crc + struct.pack("<I", zlib.crc32(head + record_crc)) + path + addr + body


def skipped(stats: ReadStats) -> dict[str, tuple[int, int]]:
    return {str(reason): (tally.spans, tally.bytes) for reason, tally in stats.skipped.items()}


# ---------------------------------------------------------------- round trips

BODIES = {
    "empty": b"",
    "all_bytes": bytes(range(256)) * 3,
    "gzip": gzip.compress(b'{"ver": 1, "info": {"reason": "saved-session"}}'),
    "magic_inside": MAGIC + b"\x1e" * 40 + MAGIC,
    "large": random.Random(7).randbytes(300_000),
}
PATHS = ["", "abc/saved-session/Firefox/23.0.1/release/20130814063812", "Wikipédia/名前/🚀/Ω"]


@pytest.mark.parametrize("body_name", sorted(BODIES))
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("client_addr", [None, "", "192.0.2.1", "2001:db8::1"])
def test_encode_decode_round_trip(body_name: str, path: str, client_addr: str | None) -> None:
    body = BODIES[body_name]
    record_bytes = encode_record(path, body, timestamp_ms=TS, client_addr=client_addr)
    prefix = legacy_v1("before/x", b"payload")  # records need not start at offset 0
    (before, record), stats = decode(prefix + record_bytes)
    assert before.format is RecordFormat.NODEJS_V1
    assert (record.path, record.body, record.timestamp_ms, record.client_addr) == (path, body, TS, client_addr)
    assert (record.offset, record.length, record.format) == (len(prefix), len(record_bytes), RecordFormat.SPOOL_V1)
    assert type(record.body) is bytes
    assert stats.records == 2 and not stats.skipped


def test_writer_and_reader_round_trip(tmp_path: Path) -> None:
    submissions = [(path, body, addr) for path in PATHS for body in BODIES.values()
                   for addr in (None, "198.51.100.7")]
    with SpoolWriter(tmp_path, "node-a", fsync="none") as writer:
        sizes = [writer.append(path, body, client_addr=addr, timestamp_ms=TS + i)
                 for i, (path, body, addr) in enumerate(submissions)]
    (finished,) = list_finished_files(tmp_path)
    reader = SpoolReader(finished)
    records = reader.read_all()
    assert [(r.path, r.body, r.client_addr, r.timestamp_ms) for r in records] == \
        [(p, b, a, TS + i) for i, (p, b, a) in enumerate(submissions)]
    assert [r.length for r in records] == sizes
    assert reader.stats.records == len(submissions) and not reader.stats.skipped
    assert finished.stat().st_size == sum(sizes) == writer.stats.bytes


def test_default_timestamp_is_the_wall_clock(tmp_path: Path) -> None:
    with SpoolWriter(tmp_path, "node-a", wall_clock_ms=lambda: 1234567890123) as writer:
        writer.append("p", b"x")
    (record,) = SpoolReader(list_finished_files(tmp_path)[0])
    assert record.timestamp_ms == 1234567890123


def test_record_layout_is_the_documented_one() -> None:
    record = encode_record("ab", b"xyz", timestamp_ms=0x0102030405060708, client_addr="c")
    assert record[:4] == b"\x89TSR" and record[4] == 1 and record[5] == 1
    assert struct.unpack_from("<HIB", record, 6) == (2, 3, 1)
    assert record[13:16] == b"\0\0\0"
    assert struct.unpack_from("<Q", record, 16)[0] == 0x0102030405060708
    record_crc, header_crc = struct.unpack_from("<II", record, 24)
    assert record_crc == zlib.crc32(record[:24] + b"abcxyz")
    assert header_crc == zlib.crc32(record[:28])
    assert record[32:] == b"abcxyz" and HEADER_SIZE == 32


# ---------------------------------------------------------------- legacy fixtures


def test_reads_original_telemetry1_log() -> None:
    reader = SpoolReader(TELEMETRY1_LOG)
    (record,) = reader.read_all()
    assert record.format is RecordFormat.NODEJS_V1
    assert record.path.startswith("17caa68c-")
    assert record.path.endswith("/idle-daily/Firefox/23.0.1/release/20130814063812")
    assert record.timestamp_ms == 1378822911255
    assert record.client_addr is None
    assert record.is_gzip and len(record.body) == 18255
    assert b'"ver":1' in gzip.decompress(record.body)
    # the stray final newline is counted, but is not damage
    assert skipped(reader.stats) == {"trailing_newline": (1, 1)}
    assert not reader.stats.damaged


def test_reads_unicode_v1_packed_log() -> None:
    reader = SpoolReader(UNICODE_PACKED)
    first, second = reader.read_all()
    assert {first.format, second.format} == {RecordFormat.NODEJS_V1}
    assert first.is_gzip and not second.is_gzip
    wikipedia = "Wikipédia".encode("utf-8")
    assert wikipedia in gzip.decompress(first.body) and wikipedia in second.body
    assert gzip.decompress(first.body).rstrip(b"\n") == second.body  # same ping, gzip one ends in \n
    assert first.path == second.path and first.path.startswith("e7916aaf-")
    assert (first.timestamp_ms, second.timestamp_ms) == (1426078139554, 1426078151424)
    assert (first.offset, second.offset) == (0, first.length)
    assert not reader.stats.skipped


def test_reads_nodejs_v2_framing_with_client_address() -> None:
    data = (legacy_v2("192.0.2.1", "id-1/idle-daily/Firefox/23.0/release/1", b"\x1f\x8bbody")
            + legacy_v2("2001:db8::7", "id-2/x", b"")
            + legacy_v2("", "id-3/x", b"\x1e" * 20))
    records, stats = decode(data)
    assert [(r.format, r.client_addr, r.path) for r in records] == [
        (RecordFormat.NODEJS_V2, "192.0.2.1", "id-1/idle-daily/Firefox/23.0/release/1"),
        (RecordFormat.NODEJS_V2, "2001:db8::7", "id-2/x"),
        (RecordFormat.NODEJS_V2, "", "id-3/x")]
    assert records[2].body == b"\x1e" * 20 and not stats.skipped


def test_mixed_formats_in_one_buffer_are_detected_per_record() -> None:
    telemetry1 = TELEMETRY1_LOG.read_bytes()[:-1]
    data = (telemetry1 + legacy_v2("192.0.2.9", "v2/path", b"v2 body")
            + encode_record("ours", b"our body", timestamp_ms=TS) + legacy_v1("v1/again", b"abc"))
    records, stats = decode(data)
    assert [r.format for r in records] == [RecordFormat.NODEJS_V1, RecordFormat.NODEJS_V2,
                                           RecordFormat.SPOOL_V1, RecordFormat.NODEJS_V1]
    assert [r.body for r in records][1:] == [b"v2 body", b"our body", b"abc"]
    assert stats.by_format == {RecordFormat.NODEJS_V1: 2, RecordFormat.NODEJS_V2: 1, RecordFormat.SPOOL_V1: 1}


def test_read_legacy_false_treats_node_framing_as_garbage() -> None:
    reader = SpoolReader(UNICODE_PACKED, read_legacy=False)
    assert reader.read_all() == []
    assert skipped(reader.stats) == {"garbage": (1, UNICODE_PACKED.stat().st_size)}


def test_legacy_resync_after_a_damaged_separator() -> None:
    good = [legacy_v1(f"id-{i}/saved-session/Firefox/23.0/release/1", gzip.compress(bytes([i]) * 500))
            for i in range(4)]
    damaged = bytearray(good[1])
    damaged[0] = 0x00
    records, stats = decode(b"".join([good[0], bytes(damaged), good[2], good[3]]))
    assert [r.path.split("/")[0] for r in records] == ["id-0", "id-2", "id-3"]
    assert skipped(stats) == {"garbage": (1, len(good[1]))}


def test_legacy_resync_does_not_trust_a_header_inside_a_damaged_body() -> None:
    # a plausible v1 header inside a body that does not end where a record starts
    decoy = legacy_v1("decoy/path", b"zz") + b"more body bytes"
    damaged = bytearray(legacy_v1("id-A/p", b"head " + decoy))
    damaged[0] = 0x00
    after = legacy_v1("id-B/p", b"b body")
    records, stats = decode(bytes(damaged) + after)
    assert [r.path for r in records] == ["id-B/p"]
    assert skipped(stats) == {"garbage": (1, len(damaged))}


def test_legacy_implausible_timestamp_is_not_a_record() -> None:
    records, stats = decode(legacy_v1("p", b"body", ts=5) + legacy_v1("q", b"body"))
    assert [r.path for r in records] == ["q"]
    assert skipped(stats) == {"implausible_legacy_header": (1, len(legacy_v1("p", b"body")))}


# ---------------------------------------------------------------- damage


def record_ends(records: list[bytes]) -> list[int]:
    ends, total = [], 0
    for record in records:
        total += len(record)
        ends.append(total)
    return ends


@pytest.mark.parametrize("kind", ["spool", "legacy"])
def test_torn_tail_at_every_byte_offset(kind: str) -> None:
    if kind == "spool":
        records = small_records(3)
    else:
        records = [legacy_v1("id-0/p", b"\x1f\x8b" + bytes(range(40))), legacy_v2("10.1.1.1", "id-1/p", b"{}"),
                   legacy_v1("id-2/p", b"\x1e\x1e" + b"x" * 30)]
    data = b"".join(records)
    ends = record_ends(records)
    for cut in range(len(data) + 1):
        returned, stats = decode(data[:cut])
        complete = [end for end in ends if end <= cut]
        assert len(returned) == len(complete), cut
        last_end = complete[-1] if complete else 0
        expected = {} if cut == last_end else {"torn_tail": (1, cut - last_end)}
        assert skipped(stats) == expected, cut


def test_torn_tail_at_every_byte_offset_of_the_unicode_fixture() -> None:
    data = UNICODE_PACKED.read_bytes()
    first_end = 2593
    for cut in range(len(data) + 1):
        returned, stats = decode(data[:cut])
        expected_records = 2 if cut == len(data) else (1 if cut >= first_end else 0)
        assert len(returned) == expected_records, cut
        last_end = {0: 0, 1: first_end, 2: len(data)}[expected_records]
        expected = {} if cut == last_end else {"torn_tail": (1, cut - last_end)}
        assert skipped(stats) == expected, cut


def test_corrupted_byte_anywhere_in_a_middle_record_loses_only_that_record() -> None:
    records = small_records(5)
    data = b"".join(records)
    start, end = record_ends(records)[1], record_ends(records)[2]
    seen_reasons = set()
    for position in range(start, end):
        damaged = bytearray(data)
        damaged[position] ^= 0xFF
        returned, stats = decode(bytes(damaged))
        assert [r.timestamp_ms for r in returned] == [TS, TS + 1, TS + 3, TS + 4], position
        ((reason, tally),) = stats.skipped.items()
        assert (tally.spans, tally.bytes) == (1, end - start), position
        assert stats.spans[0].offset == start
        seen_reasons.add(reason)
    # magic -> garbage, header fields -> header CRC, payload -> record CRC
    assert seen_reasons == {SkipReason.GARBAGE, SkipReason.HEADER_CRC_MISMATCH, SkipReason.RECORD_CRC_MISMATCH}


def test_corrupted_body_byte_is_a_record_crc_mismatch() -> None:
    records = small_records(3)
    damaged = bytearray(b"".join(records))
    damaged[len(records[0]) + len(records[1]) - 1] ^= 0x01  # last body byte of record 1
    returned, stats = decode(bytes(damaged))
    assert [r.timestamp_ms for r in returned] == [TS, TS + 2]
    assert skipped(stats) == {"record_crc_mismatch": (1, len(records[1]))}
    assert stats.damaged


@pytest.mark.parametrize("seed", range(20))
def test_garbage_between_records_is_skipped_exactly(seed: int) -> None:
    rng = random.Random(seed)
    garbage = bytes(rng.choice([0x1E, 0x89, 0x0A, rng.randrange(256)]) for _ in range(rng.randrange(1, 400)))
    garbage = garbage.lstrip(b"\x89\x1e") or b"?"  # so the span's reason (its first byte) is "garbage"
    records = small_records(4)
    data = records[0] + records[1] + garbage + MAGIC + b"\0" * 40 + records[2] + records[3]
    returned, stats = decode(data)
    assert [r.timestamp_ms for r in returned] == [TS, TS + 1, TS + 2, TS + 3]
    assert skipped(stats) == {"garbage": (1, len(garbage) + 4 + 40)}


def test_garbage_at_the_start_and_the_end() -> None:
    records = small_records(2)
    returned, stats = decode(b"not a record" + b"".join(records) + b"trailing junk")
    assert len(returned) == 2
    assert skipped(stats) == {"garbage": (2, 12 + 13)}
    assert [(span.offset, span.length) for span in stats.spans] == [(0, 12), (12 + sum(map(len, records)), 13)]


def test_a_record_cut_short_in_the_middle_does_not_swallow_the_records_after_it() -> None:
    # e.g. a torn file with more records appended: the cut record's lengths claim later bytes
    a, b, c, d = (encode_record(f"r{i}", bytes([i]) * 300, timestamp_ms=TS + i) for i in range(4))
    cut_b = b[:HEADER_SIZE + 100]
    returned, stats = decode(a + cut_b + c + d)
    assert [r.path for r in returned] == ["r0", "r2", "r3"]
    assert skipped(stats) == {"record_crc_mismatch": (1, len(cut_b))}
    small_c = encode_record("small", b"s", timestamp_ms=TS)
    returned, stats = decode(a + cut_b + small_c)  # b's claimed end is past the end of the buffer
    assert [r.path for r in returned] == ["r0", "small"]
    assert skipped(stats) == {"truncated_record": (1, len(cut_b))}


def test_header_crc_valid_but_absurd_lengths_are_rejected_without_allocating() -> None:
    absurd_header = crafted_record(path=b"p", body=b"", path_len=0xFFFF, body_len=0xFFFFFFFF)
    legacy_absurd = struct.pack("<BHIQ", 0x1E, 0xFFFF, 0xFFFFFFFF, TS) + b"p" * 20
    good = small_records(2)
    data = good[0] + absurd_header + legacy_absurd + good[1]
    tracemalloc.start()
    returned, stats = decode(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1_000_000
    assert [r.timestamp_ms for r in returned] == [TS, TS + 1]
    assert skipped(stats) == {"length_over_limit": (1, len(absurd_header) + len(legacy_absurd))}


def test_reader_limits_bound_what_a_valid_header_may_claim() -> None:
    big = encode_record("p", b"x" * 2000, timestamp_ms=TS)
    returned, stats = decode(big + small_records(1)[0], limits=SpoolLimits(max_body_bytes=1000))
    assert len(returned) == 1
    assert skipped(stats) == {"length_over_limit": (1, len(big))}


@pytest.mark.parametrize("fields", [dict(version=2), dict(flags=0x02), dict(reserved=b"\0\1\0"),
                                    dict(addr=b"1.2.3.4")])  # an address without its flag bit
def test_unknown_header_values_are_skipped_as_unsupported(fields: dict) -> None:
    assert decode(crafted_record(**fields))[0] == []  # the crafted record itself is well formed
    record = crafted_record(**fields)
    returned, stats = decode(record + small_records(1)[0])
    assert len(returned) == 1 and skipped(stats) == {"unsupported_version": (1, len(record))}


def test_crafted_record_helper_matches_encode_record() -> None:
    assert crafted_record(path=b"ab", body=b"xyz") == encode_record("ab", b"xyz", timestamp_ms=TS)


def test_a_valid_record_with_a_non_utf8_path_is_counted_as_invalid_text() -> None:
    record = crafted_record(path=b"\xff\xfe")
    returned, stats = decode(record + small_records(1)[0])
    assert len(returned) == 1 and skipped(stats) == {"invalid_text": (1, len(record))}
    assert stats.skipped_bytes == len(record)


@pytest.mark.parametrize("record", [
    legacy_v1("", b"empty path"),
    legacy_v1("tab\there", b"control character in the path"),
    struct.pack("<BHIQ", 0x1E, 2, 1, TS) + b"\xff\xfe" + b"x",  # path is not UTF-8
    legacy_v2("bad\x01ip", "p", b"non-printable address"),
], ids=["empty-path", "control-char", "not-utf8", "bad-ip"])
def test_implausible_legacy_records_are_skipped(record: bytes) -> None:
    good = legacy_v1("id/p", b"good")
    returned, stats = decode(record + good)
    assert [r.path for r in returned] == ["id/p"]
    assert skipped(stats) == {"implausible_legacy_header": (1, len(record))}


def test_writer_rejects_oversized_or_unencodable_parts() -> None:
    limits = SpoolLimits(max_path_bytes=8, max_body_bytes=10, max_client_addr_bytes=4)
    for kwargs, field in [(dict(path="x" * 9, body=b""), "path"), (dict(path="p", body=b"x" * 11), "body"),
                          (dict(path="p", body=b"", client_addr="12345"), "client_addr"),
                          (dict(path="\udcff", body=b""), "path")]:
        with pytest.raises(SpoolRecordError) as caught:
            encode_record(timestamp_ms=TS, limits=limits, **kwargs)
        assert caught.value.field == field and "\n" not in str(caught.value)
        assert isinstance(caught.value, TelemetryError)
    with pytest.raises(SpoolRecordError):
        encode_record("p", b"", timestamp_ms=-1)
    assert encode_record("x" * 8, b"x" * 10, timestamp_ms=TS, client_addr="1234", limits=limits)


@pytest.mark.parametrize("kwargs", [dict(max_path_bytes=70_000), dict(max_client_addr_bytes=256),
                                    dict(max_body_bytes=-1), dict(max_body_bytes=2**32)])
def test_limits_must_fit_the_header_fields(kwargs: dict) -> None:
    with pytest.raises(SpoolConfigError):
        SpoolLimits(**kwargs)


# ---------------------------------------------------------------- writer lifecycle


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rotation_by_size(tmp_path: Path) -> None:
    record_size = len(encode_record("id/p", b"x" * 100, timestamp_ms=TS))
    writer = SpoolWriter(tmp_path, "node-a", max_file_bytes=3 * record_size, fsync="none")
    for i in range(10):
        writer.append("id/p", b"x" * 100, timestamp_ms=TS + i)
    assert len(list_finished_files(tmp_path)) == 3  # 3 + 3 + 3 full, the 10th is open
    writer.close()
    files = list_finished_files(tmp_path)
    assert [f.stat().st_size for f in files] == [3 * record_size] * 3 + [record_size]
    assert [r.timestamp_ms for f in files for r in SpoolReader(f)] == [TS + i for i in range(10)]
    assert len({f.name for f in files}) == 4
    assert writer.stats.files_opened == writer.stats.files_finished == 4


def test_a_record_larger_than_the_file_limit_gets_a_file_of_its_own(tmp_path: Path) -> None:
    with SpoolWriter(tmp_path, "node-a", max_file_bytes=100, fsync="none") as writer:
        writer.append("a", b"x" * 10)
        writer.append("b", b"x" * 500)
        writer.append("c", b"x" * 10)
    assert [[r.path for r in SpoolReader(f)] for f in list_finished_files(tmp_path)] == [["a"], ["b"], ["c"]]


def test_rotation_by_age_on_append_and_on_poll(tmp_path: Path) -> None:
    clock = FakeClock()
    writer = SpoolWriter(tmp_path, "node-a", max_file_age_s=60, fsync="none", monotonic=clock)
    assert writer.poll() is None
    writer.append("a", b"1")
    clock.now += 59.9
    writer.append("b", b"2")
    assert writer.poll() is None and list_finished_files(tmp_path) == []
    clock.now += 0.1
    writer.append("c", b"3")  # the file is 60 s old: finished first, "c" starts a new one
    (first,) = list_finished_files(tmp_path)
    assert [r.path for r in SpoolReader(first)] == ["a", "b"]
    clock.now += 30
    assert writer.poll() is None
    clock.now += 30
    second = writer.poll()
    assert second is not None and second.parent.name == FINISHED_DIR_NAME
    assert [r.path for r in SpoolReader(second)] == ["c"]
    assert writer.current_path is None and writer.poll() is None
    assert list(writer.open_dir.iterdir()) == []


def test_close_finishes_with_an_atomic_rename(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, "node-a")
    writer.append("a", b"body")
    open_path = writer.current_path
    assert open_path is not None and open_path.parent == tmp_path / OPEN_DIR_NAME
    inode = open_path.stat().st_ino
    assert list_finished_files(tmp_path) == []
    finished = writer.close()
    assert finished == tmp_path / FINISHED_DIR_NAME / open_path.name
    assert finished.stat().st_ino == inode  # renamed, not copied
    assert not open_path.exists() and list((tmp_path / OPEN_DIR_NAME).iterdir()) == []
    assert writer.close() is None
    with pytest.raises(SpoolError, match="closed"):
        writer.append("b", b"x")


def test_close_without_appends_creates_no_file(tmp_path: Path) -> None:
    with SpoolWriter(tmp_path, "node-a"):
        pass
    assert list_finished_files(tmp_path) == [] and list((tmp_path / OPEN_DIR_NAME).iterdir()) == []


def test_file_names_carry_node_pid_and_sequence(tmp_path: Path) -> None:
    with SpoolWriter(tmp_path, "edge-1.example.org", wall_clock_ms=lambda: 42) as writer:
        writer.append("a", b"x")
        first = writer.rotate()
        writer.append("b", b"x")
    second = list_finished_files(tmp_path)[1]
    parsed = [SpoolFileName.parse(p.name) for p in (first, second)]
    assert all(p is not None and p.node_id == "edge-1.example.org" and p.pid == os.getpid()
               and p.started_ms == 42 for p in parsed)
    assert parsed[0].sequence < parsed[1].sequence
    assert list_finished_files(tmp_path) == [first, second]


def test_failed_write_is_truncated_away_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = SpoolWriter(tmp_path, "node-a", fsync="none")
    writer.append("a", b"first")
    real_write = os.write

    def half_then_enospc(target_fd: int, data: bytes) -> int:
        real_write(target_fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool_module.os, "write", half_then_enospc)
    with pytest.raises(SpoolWriteError, match="No space left on device") as caught:
        writer.append("b", b"second" * 100)
    assert isinstance(caught.value, TelemetryError) and "\n" not in str(caught.value)
    monkeypatch.setattr(spool_module.os, "write", real_write)
    writer.append("c", b"third")
    finished = writer.close()
    reader = SpoolReader(finished)
    assert [r.path for r in reader] == ["a", "c"] and not reader.stats.skipped
    assert writer.stats.write_errors == 1 and writer.stats.records == 2


def test_when_truncation_fails_too_the_file_is_finished_and_the_tail_skipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = SpoolWriter(tmp_path, "node-a", fsync="none")
    writer.append("a", b"first")
    real_write = os.write

    def half_then_eio(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(5, "Input/output error")

    def no_truncate(fd: int, length: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(spool_module.os, "write", half_then_eio)
    monkeypatch.setattr(spool_module.os, "ftruncate", no_truncate)
    with pytest.raises(SpoolWriteError):
        writer.append("b", b"second" * 100)
    monkeypatch.undo()
    assert writer.current_path is None  # the damaged file was finished
    writer.append("c", b"third")
    writer.close()
    first, second = list_finished_files(tmp_path)
    reader = SpoolReader(first)
    assert [r.path for r in reader] == ["a"] and list(reader.stats.skipped) == [SkipReason.TORN_TAIL]
    assert [r.path for r in SpoolReader(second)] == ["c"]


def test_partial_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:
        return real_write(fd, bytes(data[: max(1, len(data) // 3)]))

    monkeypatch.setattr(spool_module.os, "write", short_write)
    with SpoolWriter(tmp_path, "node-a", fsync="none") as writer:
        writer.append("a", b"x" * 1000)
        writer.append("b", b"y" * 10)
    monkeypatch.setattr(spool_module.os, "write", real_write)
    reader = SpoolReader(list_finished_files(tmp_path)[0])
    assert [(r.path, len(r.body)) for r in reader] == [("a", 1000), ("b", 10)] and not reader.stats.skipped


def test_existing_names_are_never_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "_FILE_SEQUENCE", iter(range(5, 100)))
    for directory, sequence in ((OPEN_DIR_NAME, 5), (FINISHED_DIR_NAME, 6)):
        (tmp_path / directory).mkdir(exist_ok=True)
        name = str(SpoolFileName(started_ms=42, node_id="node-a", pid=os.getpid(), sequence=sequence))
        (tmp_path / directory / name).write_bytes(b"someone else's")
    with SpoolWriter(tmp_path, "node-a", wall_clock_ms=lambda: 42) as writer:
        writer.append("p", b"x")
        assert SpoolFileName.parse(writer.current_path.name).sequence == 7
    planted = sorted(tmp_path.glob("*/*.42.[56].spool"))
    assert len(planted) == 2 and all(p.read_bytes() == b"someone else's" for p in planted)
    (ours,) = tmp_path.glob("finished/*.42.7.spool")
    assert [r.path for r in SpoolReader(ours)] == ["p"]


def test_finishing_refuses_to_replace_an_existing_file(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, "node-a")
    writer.append("p", b"x")
    clash = tmp_path / FINISHED_DIR_NAME / writer.current_path.name
    clash.write_bytes(b"precious")
    left = writer.current_path
    with pytest.raises(SpoolError, match="refusing to replace") as caught:
        writer.close()
    assert "\n" not in str(caught.value)
    assert clash.read_bytes() == b"precious" and left.exists()


@pytest.mark.parametrize("kwargs", [dict(max_file_bytes=0), dict(max_file_bytes=1.5), dict(max_file_age_s=0),
                                    dict(fsync_interval_ms=-1)])
def test_writer_settings_are_validated(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(SpoolConfigError):
        SpoolWriter(tmp_path, "node-a", **kwargs)


def test_an_unusable_spool_dir_is_a_one_line_error(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(SpoolWriteError, match="writable directory") as caught:
        SpoolWriter(not_a_directory, "node-a")
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------- fsync policies


@pytest.fixture
def sync_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the real sync calls the spool module makes (they still happen)."""
    calls = {"file": 0, "directory": 0}
    real_file, real_directory = spool_module._sync_file, spool_module.fsync_directory

    def sync_file(fd: int) -> None:
        calls["file"] += 1
        real_file(fd)

    def sync_directory(directory: Path) -> None:
        calls["directory"] += 1
        real_directory(directory)

    monkeypatch.setattr(spool_module, "_sync_file", sync_file)
    monkeypatch.setattr(spool_module, "fsync_directory", sync_directory)
    return calls


def test_fsync_none_never_syncs(tmp_path: Path, sync_calls: dict[str, int]) -> None:
    with SpoolWriter(tmp_path, "node-a", fsync="none") as writer:
        for i in range(20):
            writer.append("p", b"x")
        writer.poll()
    assert sync_calls == {"file": 0, "directory": 0}
    assert (writer.stats.file_syncs, writer.stats.directory_syncs) == (0, 0)


def test_fsync_always_syncs_every_record_before_append_returns(tmp_path: Path, sync_calls: dict[str, int],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    writer = SpoolWriter(tmp_path, "node-a", fsync=FsyncPolicy.ALWAYS)
    for i in range(20):
        writer.append("p", b"x")
        assert sync_calls["file"] == i + 1
    assert sync_calls["directory"] == 1  # the new file's entry in open/
    writer.close()  # nothing dirty left: no extra file sync, one for finished/
    assert sync_calls == {"file": 20, "directory": 2}
    assert (writer.stats.file_syncs, writer.stats.directory_syncs) == (20, 2)


def test_fsync_interval_syncs_at_most_every_interval_and_on_finish(tmp_path: Path,
                                                                    sync_calls: dict[str, int]) -> None:
    clock = FakeClock()
    writer = SpoolWriter(tmp_path, "node-a", fsync="interval", fsync_interval_ms=1000, monotonic=clock)
    for step in (0.0, 0.1, 0.5, 0.3):  # t = 0, 0.1, 0.6, 0.9
        clock.now += step
        writer.append("p", b"x")
    assert sync_calls["file"] == 0
    clock.now += 0.1  # t = 1.0
    writer.append("p", b"x")
    assert sync_calls["file"] == 1
    clock.now += 0.2
    writer.append("p", b"x")
    clock.now += 0.5  # t = 1.7: idle, not yet due
    assert writer.poll() is None and sync_calls["file"] == 1
    clock.now += 0.4  # t = 2.1: due, the dirty record is synced by poll
    writer.poll()
    assert sync_calls["file"] == 2
    clock.now += 5
    writer.poll()  # nothing dirty: no sync
    assert sync_calls["file"] == 2
    writer.append("p", b"x")  # due (5 s since the last sync)
    writer.append("p", b"x")  # dirty again, synced by close before the rename
    writer.close()
    assert sync_calls == {"file": 4, "directory": 2}
    assert writer.stats.file_syncs == 4


def test_unknown_fsync_policy_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(SpoolConfigError, match="none, interval, always"):
        SpoolWriter(tmp_path, "node-a", fsync="sometimes")


# ---------------------------------------------------------------- node ids and names


@pytest.mark.parametrize("node_id", ["../x", "a/b", "a\0b", "", ".", "..", ".hidden", "x" * 65, "a\n",
                                     "a b", "/abs", "x/../../etc", "a\\b", None, 7])
def test_hostile_node_ids_are_rejected(tmp_path: Path, node_id: object) -> None:
    with pytest.raises(SpoolConfigError, match="node id"):
        validate_node_id(node_id)  # type: ignore[arg-type]
    with pytest.raises(SpoolConfigError):
        SpoolWriter(tmp_path / "spool", node_id)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("node_id", ["node", "edge-1.example.org", "A_b-3", "x" * 64])
def test_ordinary_node_ids_are_accepted(node_id: str) -> None:
    assert validate_node_id(node_id) == node_id


@pytest.mark.parametrize("name", ["../a.1.2.3.spool", "a.1.2.3.log", "a.1.2.spool", ".a.1.2.3.spool",
                                  "a.b.2.3.spool", "a.1.2.3.spool.tmp"])
def test_foreign_file_names_do_not_parse(name: str) -> None:
    assert SpoolFileName.parse(name) is None


def _write_from_child(spool_dir: str, node_id: str, count: int, barrier) -> None:
    barrier.wait()
    with SpoolWriter(spool_dir, node_id, wall_clock_ms=lambda: 1_700_000_000_000, fsync="none") as writer:
        for i in range(count):
            writer.append(f"pid-{os.getpid()}/{i}", b"x")
            if i % 5 == 4:
                writer.rotate()


def test_two_processes_with_the_same_node_id_get_distinct_names(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    children = [context.Process(target=_write_from_child, args=(str(tmp_path), "same-node", 15, barrier))
                for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    files = list_finished_files(tmp_path)
    names = [SpoolFileName.parse(f.name) for f in files]
    assert len(files) == 6 and len({f.name for f in files}) == 6
    assert {n.pid for n in names} == {c.pid for c in children}
    assert {n.started_ms for n in names} == {1_700_000_000_000}  # same node, same clock: pid keeps them apart
    for child in children:
        paths = [r.path for f, n in zip(files, names) if n.pid == child.pid for r in SpoolReader(f)]
        assert paths == [f"pid-{child.pid}/{i}" for i in range(15)]


# ---------------------------------------------------------------- orphans


def _append_and_die(spool_dir: str, torn: bool) -> None:
    writer = SpoolWriter(spool_dir, "node-a", fsync="none")
    for i in range(3):
        writer.append(f"orphan/{i}", b"acknowledged")
    if torn:
        os.write(writer._file.fd, encode_record("torn", b"x" * 100, timestamp_ms=TS)[:50])
    os._exit(0)  # no close(): the file stays in open/


@pytest.mark.parametrize("torn", [False, True])
def test_finish_orphans_recovers_files_of_dead_writers(tmp_path: Path, torn: bool) -> None:
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=_append_and_die, args=(str(tmp_path), torn))
    child.start()
    child.join(60)
    (left,) = list((tmp_path / OPEN_DIR_NAME).iterdir())
    assert list_finished_files(tmp_path) == []
    moved = finish_orphans(tmp_path)
    assert moved == [tmp_path / FINISHED_DIR_NAME / left.name]
    reader = SpoolReader(moved[0])
    assert [r.path for r in reader] == ["orphan/0", "orphan/1", "orphan/2"]
    assert skipped(reader.stats) == ({"torn_tail": (1, 50)} if torn else {})
    assert list((tmp_path / OPEN_DIR_NAME).iterdir()) == []
    assert finish_orphans(tmp_path) == []


def test_finish_orphans_never_touches_a_live_writers_file(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, "node-a")
    writer.append("live", b"x")
    os.utime(writer.current_path, (0, 0))  # looks ancient
    assert finish_orphans(tmp_path, stale_after_s=0) == []
    assert writer.current_path.exists()
    writer.append("still-live", b"y")
    finished = writer.close()
    assert [r.path for r in SpoolReader(finished)] == ["live", "still-live"]


def test_finish_orphans_uses_age_when_the_pid_is_alive(tmp_path: Path) -> None:
    # an unlocked file whose pid is alive (here: our own, as after pid reuse)
    open_dir = tmp_path / OPEN_DIR_NAME
    open_dir.mkdir()
    name = str(SpoolFileName(started_ms=1, node_id="node-a", pid=os.getpid(), sequence=999_999))
    (open_dir / name).write_bytes(encode_record("p", b"x", timestamp_ms=TS))
    (open_dir / "notes.txt").write_text("not a spool file")
    assert finish_orphans(tmp_path, stale_after_s=600) == []
    old = (open_dir / name).stat().st_mtime - 601
    os.utime(open_dir / name, (old, old))
    assert finish_orphans(tmp_path, stale_after_s=600) == [tmp_path / FINISHED_DIR_NAME / name]
    assert (open_dir / "notes.txt").exists()


def test_finish_orphans_on_a_missing_spool_is_a_no_op(tmp_path: Path) -> None:
    assert finish_orphans(tmp_path / "nothing-here") == []
    assert list_finished_files(tmp_path / "nothing-here") == []


def test_process_alive_reports_dead_and_invalid_pids() -> None:
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=os.getpid)
    child.start()
    child.join(60)  # exited and reaped: its pid is free
    assert spool_module.process_alive(os.getpid())
    assert not spool_module.process_alive(child.pid)
    assert not spool_module.process_alive(0) and not spool_module.process_alive(-1)


# ---------------------------------------------------------------- reader details


def test_reader_stats_are_per_pass(tmp_path: Path) -> None:
    reader = SpoolReader(TELEMETRY1_LOG)
    assert len(reader.read_all()) == 1 and len(reader.read_all()) == 1
    assert reader.stats.records == 1 and reader.stats.skipped[SkipReason.TRAILING_NEWLINE].spans == 1


def test_reader_of_an_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.spool"
    empty.write_bytes(b"")
    reader = SpoolReader(empty)
    assert reader.read_all() == [] and reader.stats.records == 0 and not reader.stats.skipped


def test_reader_missing_file_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SpoolReader(tmp_path / "absent").read_all()


# ---------------------------------------------------------------- append_many (the edge's gathered writes)


def submissions(count: int, size: int = 100, start: int = 0) -> list[tuple[str, bytes, str | None, int]]:
    return [(f"id-{i}/p", bytes([i % 256]) * size, f"10.0.0.{i % 256}" if i % 2 else None, TS + i)
            for i in range(start, start + count)]


def test_append_many_writes_the_same_bytes_as_append(tmp_path: Path) -> None:
    batch = submissions(40)
    with SpoolWriter(tmp_path / "one", "node-a", fsync="none") as one:
        sizes = [one.append(path, body, client_addr=addr, timestamp_ms=ts) for path, body, addr, ts in batch]
    with SpoolWriter(tmp_path / "many", "node-a", fsync="none") as many:
        assert many.append_many(batch[:25]) + many.append_many(batch[25:]) == sizes
        assert many.stats.records == 40 and many.stats.bytes == sum(sizes)
    (first,), (second,) = list_finished_files(tmp_path / "one"), list_finished_files(tmp_path / "many")
    assert first.read_bytes() == second.read_bytes()


def test_append_many_uses_one_gathered_write_per_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_writev = os.writev

    def counting_writev(fd: int, buffers: list[bytes]) -> int:
        calls.append(len(buffers))
        return real_writev(fd, buffers)

    monkeypatch.setattr(spool_module.os, "writev", counting_writev)
    with SpoolWriter(tmp_path, "node-a", fsync="none") as writer:
        writer.append_many(submissions(600))
    assert calls == [512, 512, 176]  # 256 records of two buffers per writev (Linux takes 1024 buffers)
    (finished,) = list_finished_files(tmp_path)
    assert [r.timestamp_ms for r in SpoolReader(finished)] == [TS + i for i in range(600)]


def test_append_many_rotates_by_size_inside_a_batch(tmp_path: Path) -> None:
    record_size = sum(map(len, encode_record_parts("id-0/p", b"x" * 100, timestamp_ms=TS)))
    with SpoolWriter(tmp_path, "node-a", max_file_bytes=3 * record_size + 20, fsync="none") as writer:
        writer.append_many([(path, body, None, ts) for path, body, _, ts in submissions(10)])
    files = list_finished_files(tmp_path)
    assert [len(SpoolReader(f).read_all()) for f in files] == [3, 3, 3, 1]
    assert [r.timestamp_ms for f in files for r in SpoolReader(f)] == [TS + i for i in range(10)]


def test_append_many_rotates_by_age_first(tmp_path: Path) -> None:
    clock = FakeClock()
    writer = SpoolWriter(tmp_path, "node-a", max_file_age_s=60, fsync="none", monotonic=clock)
    writer.append("old", b"1")
    clock.now += 60
    writer.append_many(submissions(3))
    (old,) = list_finished_files(tmp_path)
    assert [r.path for r in SpoolReader(old)] == ["old"]
    assert [r.path for r in SpoolReader(writer.close())] == ["id-0/p", "id-1/p", "id-2/p"]


def test_append_many_refuses_a_bad_record_alone(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, "node-a", fsync="none", limits=SpoolLimits(max_path_bytes=20, max_body_bytes=50))
    results = writer.append_many([("ok-1", b"a", None, TS), ("x" * 21, b"b", None, TS), ("ok-2", b"c" * 51, None, TS),
                                  ("ok-3", b"d", "\udcff", TS), ("ok-4", b"e", None, 2**64), ("ok-5", b"f", None, None)])
    assert isinstance(results[0], int) and isinstance(results[5], int)
    assert [type(r).__name__ for r in results[1:5]] == ["SpoolRecordError"] * 4
    assert [r.path for r in SpoolReader(writer.close())] == ["ok-1", "ok-5"]


def test_a_failed_gathered_write_fails_its_records_and_the_later_ones(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    writer = SpoolWriter(tmp_path, "node-a", fsync="none")
    writer.append_many(submissions(2))
    real_writev = os.writev

    def half_then_enospc(fd: int, buffers: list[bytes]) -> int:
        os.write(fd, b"".join(buffers)[: sum(map(len, buffers)) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool_module.os, "writev", half_then_enospc)
    monkeypatch.setattr(spool_module, "_RECORDS_PER_WRITE", 3)
    results = writer.append_many(submissions(7, start=2))
    assert all(isinstance(r, SpoolWriteError) and "No space left" in str(r) for r in results)
    assert writer.stats.write_errors == 1  # the first group failed; the rest were not tried
    monkeypatch.setattr(spool_module.os, "writev", real_writev)
    assert all(isinstance(r, int) for r in writer.append_many(submissions(2, start=9)))
    reader = SpoolReader(writer.close())
    assert [r.timestamp_ms for r in reader] == [TS, TS + 1, TS + 9, TS + 10] and not reader.stats.skipped


def test_short_gathered_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_writev, real_write = os.writev, os.write
    monkeypatch.setattr(spool_module.os, "writev", lambda fd, buffers: real_writev(fd, buffers[:1]))
    monkeypatch.setattr(spool_module.os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    with SpoolWriter(tmp_path, "node-a", fsync="none") as writer:
        writer.append_many(submissions(5, size=1000))
    monkeypatch.undo()
    reader = SpoolReader(list_finished_files(tmp_path)[0])
    assert [r.timestamp_ms for r in reader] == [TS + i for i in range(5)] and not reader.stats.skipped


def test_a_failure_to_open_the_next_file_fails_the_rest_of_the_batch(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    record_size = sum(map(len, encode_record_parts("id-0/p", b"x" * 100, timestamp_ms=TS)))
    writer = SpoolWriter(tmp_path, "node-a", max_file_bytes=2 * record_size + 20, fsync="none")
    real_open = os.open
    opened = []

    def second_open_fails(path, flags, mode=0o777):
        if str(path).endswith(".spool"):
            opened.append(path)
            if len(opened) == 2:
                raise OSError(13, "Permission denied")
        return real_open(path, flags, mode)

    monkeypatch.setattr(spool_module.os, "open", second_open_fails)
    results = writer.append_many([(path, body, None, ts) for path, body, _, ts in submissions(5)])
    assert [isinstance(r, int) for r in results] == [True, True, False, False, False]
    assert "Permission denied" in str(results[2])
    monkeypatch.undo()
    (first,) = list_finished_files(tmp_path)
    assert [r.timestamp_ms for r in SpoolReader(first)] == [TS, TS + 1]


def test_fsync_always_syncs_once_per_gathered_write(tmp_path: Path, sync_calls: dict[str, int]) -> None:
    writer = SpoolWriter(tmp_path, "node-a", fsync="always")
    writer.append_many(submissions(30))
    assert sync_calls["file"] == 1 and writer.stats.file_syncs == 1  # a group commit
    writer.append_many(submissions(1, start=30))
    assert sync_calls["file"] == 2
    writer.close()


def test_append_many_on_a_closed_writer_is_an_error(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, "node-a")
    writer.close()
    with pytest.raises(SpoolError, match="closed"):
        writer.append_many(submissions(1))
