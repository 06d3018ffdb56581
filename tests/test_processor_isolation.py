"""One poisoned record never holds back the others (issue #13).

A corpus of hostile records, each placed between good records of one spool
file: every good record is published once, every poisoned one is
quarantined under the expected category with a one-line detail, the file is
never retried or failed, and no request reaches the Histograms.json server
for a revision outside ``convert.histograms.repositories``.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import lzma
from pathlib import Path
from typing import Any

import orjson
import pytest

from telemetry_core import hookimpl
from telemetry_core.store.process.processor import Processor
from hg_stub import HgStub
from process_helpers import DIMS_PATH, FIXTURE_PING, processor_engine, uuid, write_spool

GOOD_PAYLOAD = orjson.loads(gzip.decompress(FIXTURE_PING.body))


def payload(**changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(GOOD_PAYLOAD)
    document.update(changes)
    return document


def with_info(**changes: Any) -> dict[str, Any]:
    document = payload()
    document["info"].update(changes)
    return document


def nested(depth: int) -> bytes:
    """A payload whose ``x`` field nests arrays so that the payload is ``depth`` levels deep."""
    return b'{"info":{"reason":"idle-daily"},"x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def addon(bucket_count: Any) -> dict[str, Any]:
    return payload(addonHistograms={"bomb@example.com": {"BOMB": {
        "range": [1, 1000], "bucket_count": bucket_count, "histogram_type": 0, "values": {"1": 1},
        "sum": 1, "log_sum": 0, "log_sum_squares": 0}}})


class Exploding:
    """A third-party convert plugin with bugs that only some records trigger."""

    @hookimpl
    def telemetry_convert_payload(self, record, spec):
        info = record.payload.get("info") or {}
        if info.get("explode") == "runtime":
            raise RuntimeError("plugin bug\nwith a second line")
        if info.get("explode") == "recursion":
            raise RecursionError("maximum recursion depth exceeded")
        if info.get("explode") == "unserializable":
            record.payload["oops"] = {1, 2}  # a set: JSON has no form for it
        if info.get("explode") == "keyerror":
            return [record.payload["no such key"]]
        return []


def J(document: Any) -> bytes:  # noqa: N802 - reads like a literal in the table below
    return json.dumps(document).encode()


def corpus(hg_url: str) -> list[tuple[str, str, bytes, str]]:
    """(label, path, body, expected category) of each poisoned record."""
    gz = gzip.compress
    many = {f"H{n}": {} for n in range(10_001)}
    huge_count = copy.deepcopy(GOOD_PAYLOAD)
    name = next(iter(huge_count["histograms"]))
    huge_count["histograms"][name]["values"] = {"0": 10 ** 30}
    bad_key = copy.deepcopy(GOOD_PAYLOAD)
    bad_key["histograms"][name]["values"] = {"7777777": 1}
    items = [
        ("depth 65", nested(65), "too_deep"),
        ("depth 254", nested(254), "too_deep"),
        ("depth 255", nested(255), "too_deep"),
        ("depth 600", nested(600), "too_deep"),
        ("depth 1023", nested(1023), "too_deep"),
        ("depth 1100, past the JSON parser", nested(1100), "corrupted_data"),
        ("deep inside histograms", J(payload(histograms={"A": {"values": json.loads(nested(80))}})), "too_deep"),
        ("a JSON array", b"[1, 2, 3]", "bad_payload"),
        ("a JSON string", b'"hello"', "bad_payload"),
        ("a JSON number", b"42", "bad_payload"),
        ("JSON null", b"null", "bad_payload"),
        ("JSON true", b"true", "bad_payload"),
        # Damaged text is repaired (U+FFFD) and the record judged on its shape (payload_text.py):
        ("invalid UTF-8 in a payload without ver", b'{"info": {"reason": "\xff\xfe"}}', "bad_payload"),
        ("invalid UTF-8 that is not JSON either", b'{"info": {"reason": "\xff\xfe"}', "corrupted_data"),
        ("a lone surrogate in a payload without ver", b'{"info": {"reason": "\\ud800"}}', "bad_payload"),
        ("a lone surrogate beside a NaN", b'{"info": {"reason": "\\ud800"}, "x": NaN}', "corrupted_data"),
        ("truncated JSON", J(GOOD_PAYLOAD)[:500], "corrupted_data"),
        ("infinite number", b'{"info": {}, "x": 1e400}', "corrupted_data"),
        ("NaN", b'{"info": {}, "x": NaN}', "corrupted_data"),
        ("a count of 10^30", J(huge_count), "bad_payload"),
        ("a bucket that is no lower bound", J(bad_key), "bad_payload"),
        ("add-on bucket bomb 10^8", J(addon(10 ** 8)), "too_many_buckets"),
        ("add-on bucket bomb 20000", J(addon(20_000)), "too_many_buckets"),
        ("add-on bucket count as a string", J(addon("10")), "bad_payload"),
        ("10001 histograms", J(payload(histograms=many)), "too_many_histograms"),
        ("a 2000-character key", J(payload(**{"k" * 2000: 1})), "key_too_long"),
        ("a long key deep down", J(with_info(extra={"e" * 5000: 1})), "key_too_long"),
        ("revision on another host", J(with_info(revision="http://attacker.invalid/mozilla-central/rev/0123456789ab")),
         "unknown_revision"),
        ("revision in a repository nobody knows", J(with_info(revision="https://hg.mozilla.org/random/x1y2/rev/abcdef")),
         "unknown_revision"),
        ("revision in users/", J(with_info(revision="https://hg.mozilla.org/users/someone/rev/abcdef012345")),
         "unknown_revision"),
        ("revision of the try repository", J(with_info(revision="https://hg.mozilla.org/try/rev/abcdef012345")),
         "unknown_revision"),
        ("revision without repository", J(with_info(revision="/rev/")), "missing_revision_repo"),
        ("revision that is no URL", J(with_info(revision="not a url")), "missing_revision"),
        ("revision escaping the cache", J(with_info(revision="http://hg.mozilla.org/releases/../../../tmp/rev/abc")),
         "missing_revision"),
        ("revision with a non-hex changeset", J(with_info(revision="http://hg.mozilla.org/mozilla-central/rev/zzzz")),
         "missing_revision"),
        ("revision the server does not have (404)",
         J(with_info(revision="http://hg.mozilla.org/mozilla-central/rev/00000000dead")), "conversion_error"),
        ("histograms as a list", J(payload(histograms=[1, 2])), "bad_payload"),
        ("histogram values as a list", J(payload(histograms={name: {"values": [1]}})), "bad_payload"),
        ("info as a string", J(payload(info="nope")), "missing_revision"),
        ("sum as a string", J(payload(histograms={name: dict(GOOD_PAYLOAD["histograms"][name], sum="1")})),
         "bad_payload"),
        ("empty body", b"", "empty_data"),
        ("gzip that is corrupt", b"\x1f\x8b\x08\x00" + b"\x00" * 30, "corrupted_data"),
        ("gzip bomb", gz(b" " * (3 * 1024 * 1024)), "oversized_data"),
        ("a plugin that raises", J(with_info(explode="runtime")), "processing_error"),
        ("a plugin that recurses", J(with_info(explode="recursion")), "processing_error"),
        ("a plugin with a KeyError", J(with_info(explode="keyerror")), "processing_error"),
        ("a plugin that leaves an unserializable payload", J(with_info(explode="unserializable")), "bad_payload"),
    ]
    del hg_url
    return [(label, f"{uuid(1000 + n)}/{DIMS_PATH}", body, category)
            for n, (label, body, category) in enumerate(items)]


def read_archive(archive: Path) -> tuple[dict[str, int], dict[str, list[tuple[str, dict[str, Any]]]]]:
    """(published count per id, {id: [(category, invalid document)]}) from the xz files of ``archive``."""
    published: dict[str, int] = {}
    quarantined: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for path in archive.rglob("*.xz"):
        relative = path.relative_to(archive).parts
        for line in lzma.decompress(path.read_bytes()).splitlines():
            record_id, _, rest = line.partition(b"\t")
            if relative[0] == "_invalid":
                quarantined.setdefault(record_id.decode(), []).append((relative[1], json.loads(rest)))
            else:
                published[record_id.decode()] = published.get(record_id.decode(), 0) + 1
    return published, quarantined


@pytest.fixture
def hg_server():
    stub = HgStub().start()
    try:
        yield stub
    finally:
        stub.stop()


def test_every_poisoned_record_is_quarantined_and_every_good_one_published(tmp_path, hg_server):
    poisons = corpus(hg_server.url)
    assert len(poisons) >= 40
    records: list[tuple[str, bytes]] = []
    good_ids = []
    for n, (_label, path, body, _category) in enumerate(poisons):
        good = f"{uuid(n)}/{DIMS_PATH}"
        good_ids.append(uuid(n))
        records += [(good, FIXTURE_PING.body), (path, body)]
    records.append((f"{uuid(999)}/{DIMS_PATH}", FIXTURE_PING.body))
    good_ids.append(uuid(999))
    records += [("not-a-uuid-path", FIXTURE_PING.body), (f"{uuid(998)}/idle-daily/Fire\x01fox/23/release/1",
                                                         FIXTURE_PING.body)]
    source = write_spool(tmp_path, records)

    engine = processor_engine(tmp_path, Exploding(), overrides=[
        f"convert.histograms.server={hg_server.url}", f"convert.histograms.cache_dir={tmp_path / 'cache'}",
        "convert.histograms.retries=0", "process.max_attempts=1", "process.max_inflated_bytes=2097152"])
    summary = Processor(engine).run_once()

    assert summary.files == 1 and summary.failed_files == [] and summary.retry_later == []
    assert not list((tmp_path / "failed").iterdir()) and not list((tmp_path / "work").iterdir())
    assert not source.exists()
    published, quarantined = read_archive(tmp_path / "archive")
    assert published == {record_id: 1 for record_id in good_ids}
    wrong = {}
    for label, path, body, category in poisons:
        record_id = path.split("/")[0]
        landed = quarantined.get(record_id)
        if landed is None or [c for c, _ in landed] != [category]:
            wrong[label] = landed and [(c, d["detail"]) for c, d in landed]
            continue
        document = landed[0][1]
        assert base64.b64decode(document["body_b64"]) == body, label  # the original bytes, exactly
        assert "\n" not in document["detail"] and "Traceback" not in document["detail"], label
    assert wrong == {}
    assert {c for c, _ in quarantined.get("-", [])} <= {"invalid_path", "invalid_control_char", "uuid_only_path"}
    assert sum(len(v) for v in quarantined.values()) == len(poisons) + 2
    # No request for a revision outside the allowed repositories; one for the 404.
    assert hg_server.requests == [
        "/mozilla-central/raw-file/00000000dead/toolkit/components/telemetry/Histograms.json"]
    manifest = json.loads(next((tmp_path / "archive" / "_manifests").rglob("*.json")).read_text())
    assert manifest["records_read"] == len(records) and manifest["parked"] == []


def test_processing_error_details_name_the_stage_and_the_exception(tmp_path):
    write_spool(tmp_path, [(f"{uuid(1)}/{DIMS_PATH}", J(with_info(explode="runtime")))])
    Processor(processor_engine(tmp_path, Exploding())).run_once()
    _, quarantined = read_archive(tmp_path / "archive")
    ((category, document),) = quarantined[uuid(1)]
    assert category == "processing_error"
    assert document["detail"] == "convert: RuntimeError: plugin bug with a second line"


def test_limits_are_configurable(tmp_path):
    write_spool(tmp_path, [(f"{uuid(1)}/{DIMS_PATH}", nested(20)), (f"{uuid(2)}/{DIMS_PATH}", FIXTURE_PING.body)])
    engine = processor_engine(tmp_path, overrides=["process.limits.max_depth=10",
                                                   "process.limits.max_histograms=100"])
    Processor(engine).run_once()
    published, quarantined = read_archive(tmp_path / "archive")
    assert published == {}
    assert quarantined[uuid(1)][0][0] == "too_deep" and quarantined[uuid(2)][0][0] == "too_many_histograms"
    assert "process.limits.max_histograms" in quarantined[uuid(2)][0][1]["detail"]


def test_a_store_plugin_that_fails_on_one_record_quarantines_only_that_record(tmp_path):
    class PickyStore:
        @hookimpl(tryfirst=True)
        def telemetry_store_partition(self, record, schema, node_id, seq):
            if record.id == uuid(2):
                raise ValueError("cannot place this one")

    write_spool(tmp_path, [(f"{uuid(n)}/{DIMS_PATH}", FIXTURE_PING.body) for n in range(1, 4)])
    summary = Processor(processor_engine(tmp_path, PickyStore())).run_once()
    assert summary.files == 1 and summary.failed_files == []
    published, quarantined = read_archive(tmp_path / "archive")
    assert published == {uuid(1): 1, uuid(3): 1}
    assert quarantined[uuid(2)][0][1]["detail"] == "partition: ValueError: cannot place this one"
