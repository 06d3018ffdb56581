"""The Histograms.json revision cache and history, against a local stand-in for hg.mozilla.org.

``FakeHg`` serves a linear repository model the way hgweb does
(``raw-file``, ``json-rev``, and ``json-log/<rev>/<file>`` = filelog, newest
first, ``revcount`` entries ending at the file revision in effect at
``<rev>``), and can be told to misbehave per URL path: slow, 500, 404,
invalid bodies, truncated bodies.  Expected specs are computed from that
model, never from a table.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit, parse_qs

import pytest

from telemetry_core.atomic_files import write_bytes_atomically
from telemetry_core.errors import RecordError
from telemetry_core.convert.history import (HistogramsHistory, SpecResolver, build_time, parse_hgweb_changeset,
                                             parse_hgweb_filelog, repository_for_channel)
from telemetry_core.convert.revisions import (DEFAULT_SEED_DIR, HISTOGRAMS_JSON_PATH, HgwebError, InvalidHgwebResponse,
                                      Revision, RevisionCache, RevisionNotFoundError, inside, parse_histograms_json,
                                      parse_revision, revision_cache_from_options)

FIXTURES = Path(__file__).parent / "fixtures"
AURORA = {
    23: FIXTURES / "histograms_json__FIREFOX_AURORA_23_BASE__as_a55c55edf302.json",
    24: FIXTURES / "histograms_json__FIREFOX_AURORA_24_BASE__as_8d3810543edc.json",
    25: FIXTURES / "histograms_json__FIREFOX_AURORA_25_BASE__as_ad0ae007aa9e.json",
}
FIXTURE_PING_REVISION = "http://hg.mozilla.org/releases/mozilla-release/rev/a55c55edf302"
DAY = 86400.0
D0 = datetime(2013, 5, 13, tzinfo=timezone.utc).timestamp()


def fixture_bytes(version: int) -> bytes:
    return AURORA[version].read_bytes()


def node_for(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()


# --------------------------------------------------------------------------- the stand-in hgweb


@dataclass
class FakeChangeset:
    """One changeset; ``histograms`` is the new Histograms.json when it changes the file."""

    node: str
    date: float
    histograms: bytes | None = None
    desc: str = ""


@dataclass
class FakeRepo:
    """A linear repository, oldest changeset first."""

    changesets: list[FakeChangeset] = field(default_factory=list)

    def add(self, label: str, date: float, histograms: bytes | None = None) -> FakeChangeset:
        changeset = FakeChangeset(node_for(label), date, histograms, label)
        self.changesets.append(changeset)
        return changeset

    def index(self, rev: str) -> int | None:
        if rev == "tip":
            return len(self.changesets) - 1 if self.changesets else None
        matches = [i for i, c in enumerate(self.changesets) if c.node.startswith(rev.lower())]
        return matches[0] if len(matches) == 1 else None

    def file_change_at(self, index: int) -> int | None:
        """Index of the changeset whose Histograms.json is in effect at ``index``."""
        for i in range(index, -1, -1):
            if self.changesets[i].histograms is not None:
                return i
        return None

    def file_at(self, index: int) -> bytes | None:
        change = self.file_change_at(index)
        return None if change is None else self.changesets[change].histograms

    def filelog(self, index: int, revcount: int) -> list[FakeChangeset] | None:
        """hgweb's filelog: the last ``revcount`` file revisions up to the one in effect at ``index``."""
        change = self.file_change_at(index)
        if change is None:
            return None
        touching = [c for c in self.changesets[: change + 1] if c.histograms is not None]
        return list(reversed(touching[-revcount:]))

    def entry(self, index: int) -> dict[str, Any]:
        changeset = self.changesets[index]
        return {
            "bookmarks": [], "branch": "default", "date": [changeset.date, -7200], "desc": changeset.desc,
            "node": changeset.node, "parents": [self.changesets[index - 1].node] if index else [],
            "phase": "public", "tags": [], "user": "Someone <someone@example.com>",
        }


class FakeHg:
    """State shared by the stand-in server's handler threads."""

    COMMANDS = ("raw-file", "json-log", "json-rev")

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[str] = []
        self.faults: dict[str, list[str]] = {}
        self.forever: dict[str, str] = {}
        self.slow_seconds = 1.0
        self.delay_seconds = 0.0
        self.lock = threading.Lock()

    def fail(self, path: str, *faults: str, forever: str | None = None) -> None:
        """Answer the next requests for ``path`` with ``faults`` (then ``forever``, if given)."""
        with self.lock:
            self.faults.setdefault(path, []).extend(faults)
            if forever:
                self.forever[path] = forever

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for seen in self.requests if seen.split("?")[0] == path)

    def count_command(self, command: str) -> int:
        with self.lock:
            return sum(1 for seen in self.requests if f"/{command}/" in seen)

    def next_fault(self, path: str) -> str | None:
        with self.lock:
            self.requests.append(path)
            path = path.split("?")[0]
            queued = self.faults.get(path)
            if queued:
                return queued.pop(0)
            return self.forever.get(path)


class FakeHgHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeHgServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return

    def do_GET(self) -> None:
        fake = self.server.fake
        fault = fake.next_fault(self.path)
        if fake.delay_seconds:
            time.sleep(fake.delay_seconds)
        if fault == "slow":
            time.sleep(fake.slow_seconds)
            fault = None
        if fault == "500":
            return self.answer(500, b"internal error")
        if fault == "404":
            return self.answer(404, b"not found")
        if fault == "invalid_json":
            return self.answer(200, b"<html>this is not JSON</html>")
        if fault == "json_list":
            return self.answer(200, b'["a"]')
        if fault == "no_kind":
            return self.answer(200, b'{"MY_HISTOGRAM": {"description": "no kind here"}}')
        status, body = self.route(fake)
        if fault == "truncated":
            return self.answer(status, body[: len(body) // 2], content_length=len(body))
        return self.answer(status, body)

    def route(self, fake: FakeHg) -> tuple[int, bytes]:
        parts = urlsplit(self.path)
        components = parts.path.strip("/").split("/")
        command_at = next((i for i, part in enumerate(components) if part in FakeHg.COMMANDS), None)
        if command_at is None or command_at + 1 >= len(components):
            return 404, b"unknown command"
        repo = fake.repos.get("/".join(components[:command_at]))
        command, rev, file_path = components[command_at], components[command_at + 1], \
            "/".join(components[command_at + 2:])
        index = repo.index(rev) if repo else None
        if repo is None or index is None:
            return 404, b"unknown revision"
        if command == "json-rev":
            return 200, json.dumps(repo.entry(index), indent=1).encode()
        if file_path != HISTOGRAMS_JSON_PATH:
            return 404, b"unknown file"
        if command == "raw-file":
            content = repo.file_at(index)
            return (404, b"no such file") if content is None else (200, content)
        revcount = int(parse_qs(parts.query).get("revcount", ["60"])[0])
        log = repo.filelog(index, revcount)
        if log is None:
            return 404, b"no such file"
        entries = [repo.entry(repo.changesets.index(change)) for change in log]
        return 200, json.dumps({"entries": entries}, indent=1).encode()

    def answer(self, status: int, body: bytes, content_length: int | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
            if content_length is not None:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (read timeout): nothing to answer


class FakeHgServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, fake: FakeHg) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), FakeHgHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:  # clients time out on purpose
        return


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests must reach 127.0.0.1 directly, never through a proxy from the environment."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")


def build_central() -> FakeRepo:
    """mozilla-central stand-in: three Histograms.json changes (the fixtures) among other changesets."""
    repo = FakeRepo()
    repo.add("c01 add Histograms.json", D0, fixture_bytes(23))
    repo.add("c02 unrelated", D0 + 1 * DAY)
    repo.add("c03 telemetry: aurora 24 probes", D0 + 5 * DAY, fixture_bytes(24))
    repo.add("c04 unrelated", D0 + 6 * DAY)
    repo.add("c05 unrelated", D0 + 7 * DAY)
    repo.add("c06 telemetry: aurora 25 probes", D0 + 9 * DAY, fixture_bytes(25))
    repo.add("c07 unrelated", D0 + 10 * DAY)
    return repo


@pytest.fixture
def hg() -> Iterator[tuple[FakeHg, str]]:
    fake = FakeHg()
    fake.repos["mozilla-central"] = build_central()
    server = FakeHgServer(fake)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake, server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_cache(server: str | None, cache_dir: Path, **settings: Any) -> RevisionCache:
    options: dict[str, Any] = dict(connect_timeout=0.2, read_timeout=0.2, retries=2, backoff=0.01)
    options.update(settings)
    return RevisionCache(server, cache_dir, **options)


def files_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()) \
        if directory.exists() else []


def raw_path(repo: str, changeset: str) -> str:
    return f"/{repo}/raw-file/{changeset}/{HISTOGRAMS_JSON_PATH}"


def central(index: int) -> FakeChangeset:
    return build_central().changesets[index]


# --------------------------------------------------------------------------- revision URLs


@pytest.mark.parametrize("url, repo, changeset", [
    ("http://hg.mozilla.org/mozilla-central/rev/73f0c5b00572", "mozilla-central", "73f0c5b00572"),
    ("https://hg.mozilla.org/mozilla-central/rev/73f0c5b00572", "mozilla-central", "73f0c5b00572"),
    ("https://hg.mozilla.org/mozilla-central/rev/73f0c5b00572/", "mozilla-central", "73f0c5b00572"),
    ("http://hg.mozilla.org/releases/mozilla-aurora/rev/089956e907ed", "releases/mozilla-aurora", "089956e907ed"),
    ("http://hg.mozilla.org/releases/mozilla-beta/rev/089956e907ed", "releases/mozilla-beta", "089956e907ed"),
    (FIXTURE_PING_REVISION, "releases/mozilla-release", "a55c55edf302"),
    ("http://hg.mozilla.org/releases/mozilla-esr24/rev/abcdef012345", "releases/mozilla-esr24", "abcdef012345"),
    ("http://hg.mozilla.org/projects/cedar/rev/abcdef012345", "projects/cedar", "abcdef012345"),
    ("http://hg.mozilla.org/projects/larch/rev/abcdef012345", "projects/larch", "abcdef012345"),
    ("http://hg.mozilla.org/projects/fig/rev/abcdef012345/", "projects/fig", "abcdef012345"),
    ("http://hg.mozilla.org/projects/ux/rev/abcdef012345", "projects/ux", "abcdef012345"),
    ("http://hg.mozilla.org/integration/mozilla-inbound/rev/abcdef012345", "integration/mozilla-inbound",
     "abcdef012345"),
    ("http://hg.mozilla.org/integration/fx-team/rev/abcdef012345", "integration/fx-team", "abcdef012345"),
    ("http://hg.mozilla.org/integration/b2g-inbound/rev/abcdef012345", "integration/b2g-inbound", "abcdef012345"),
    ("http://hg.mozilla.org/try/rev/abcdef012345", "try", "abcdef012345"),
    ("https://hg.mozilla.org/try/rev/ABCDEF012345", "try", "abcdef012345"),
    ("http://hg.mozilla.org/mozilla-central/rev/" + "a" * 40, "mozilla-central", "a" * 40),
    ("http://localhost:8000/mozilla-central/rev/abc123", "mozilla-central", "abc123"),
])
def test_revision_urls_of_every_repository_family_parse(url: str, repo: str, changeset: str) -> None:
    revision = parse_revision(url)
    assert (revision.repo_path, revision.changeset) == (repo, changeset)
    assert revision.cache_key == changeset[:12]


@pytest.mark.parametrize("url", ["/rev/", "/rev/a55c55edf302", "http://hg.mozilla.org/rev/a55c55edf302"])
def test_revision_without_a_repository_is_missing_revision_repo(url: str) -> None:
    with pytest.raises(RecordError) as caught:
        parse_revision(url)
    assert caught.value.category == "missing_revision_repo"


@pytest.mark.parametrize("url", [
    None, "", 42, "a55c55edf302", "ftp://hg.mozilla.org/mozilla-central/rev/a55c55edf302",
    "http://hg.mozilla.org/mozilla-central/rev/", "http://hg.mozilla.org/mozilla-central/rev/xyz123",
    "http://hg.mozilla.org/mozilla-central/rev/" + "a" * 41,
    "http://hg.mozilla.org/mozilla-central/rev/a55c55edf302/extra",
    "http://hg.mozilla.org/mozilla-central/rev/a55c55edf302\n",
    "http://hg.mozilla.org/mozilla-central/file/a55c55edf302",
    "http://hg.mozilla.org/mozilla-central/rev/a55c55edf302?x=1",
])
def test_malformed_revisions_are_missing_revision(url: object) -> None:
    with pytest.raises(RecordError) as caught:
        parse_revision(url)
    assert caught.value.category == "missing_revision"


@pytest.mark.parametrize("url", [
    "http://hg.mozilla.org/../../etc/rev/a55c55edf302",
    "http://hg.mozilla.org/releases/../../../tmp/rev/a55c55edf302",
    "http://hg.mozilla.org/./mozilla-central/rev/a55c55edf302",
    "http://hg.mozilla.org//etc/rev/a55c55edf302",
    "http://hg.mozilla.org/releases//mozilla-release/rev/a55c55edf302",
    "http://hg.mozilla.org/releases\\..\\..\\tmp/rev/a55c55edf302",
    "http://hg.mozilla.org/a\x00b/rev/a55c55edf302",
    "http://hg.mozilla.org/%2e%2e/%2e%2e/rev/a55c55edf302",
    "http://hg.mozilla.org/.hidden/rev/a55c55edf302",
    "http://hg.mozilla.org/-rf/rev/a55c55edf302",
    "http://hg.mozilla.org/" + "x" * 65 + "/rev/a55c55edf302",
    "http://hg.mozilla.org/" + "/".join(["a"] * 7) + "/rev/a55c55edf302",
    "http://hg.mozilla.org/" + "/".join(["abcdefghij"] * 6) * 4 + "/rev/a55c55edf302",
])
def test_hostile_revision_paths_are_rejected(url: str) -> None:
    with pytest.raises(RecordError) as caught:
        parse_revision(url)
    assert caught.value.category == "missing_revision"
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("repo, changeset", [
    ("../outside", "abc"), ("/etc", "abc"), ("a/../../b", "abc"), ("ok", "../../x"), ("ok", "abc/def"),
    ("ok", ""), ("", "abc"), ("a\\b", "abc"),
])
def test_revision_objects_refuse_unsafe_parts(repo: str, changeset: str) -> None:
    with pytest.raises(RecordError):
        Revision(repo, changeset)


def test_cache_paths_cannot_leave_the_cache_dir(tmp_path: Path) -> None:
    with pytest.raises(RecordError):
        inside(tmp_path / "cache", tmp_path / "cache" / ".." / "elsewhere")
    assert inside(tmp_path / "cache", tmp_path / "cache" / "a" / "b") == tmp_path / "cache" / "a" / "b"


def test_a_hostile_ping_writes_nothing_anywhere(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    cache = make_cache(server, tmp_path / "cache")
    for url in ("http://x/../../escaped/rev/abc", "http://x/a/%2e%2e/rev/abc", "http://x/..%2f../rev/abc"):
        with pytest.raises(RecordError):
            cache.histograms_json(url)
    assert files_under(tmp_path) == []
    assert fake.requests == []


# --------------------------------------------------------------------------- fetch and cache


def test_fetch_stores_on_disk_and_the_next_cache_reads_it_without_the_network(
        hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    c03 = central(2)
    cache = make_cache(server, tmp_path / "cache")
    data = cache.histograms_json(f"https://hg.mozilla.org/mozilla-central/rev/{c03.node[:12]}")
    assert data == json.loads(fixture_bytes(24))
    assert fake.count(raw_path("mozilla-central", c03.node[:12])) == 1
    stored = tmp_path / "cache" / "mozilla-central" / c03.node[:12] / "Histograms.json"
    assert stored.read_bytes() == fixture_bytes(24)

    assert cache.histograms_json(Revision("mozilla-central", c03.node[:12])) is data
    assert cache.stats.memory_hits == 1

    # Another process: the 40-digit form of the same changeset shares the 12-digit cache entry.
    other = make_cache("http://127.0.0.1:9", tmp_path / "cache")
    assert other.histograms_json(Revision("mozilla-central", c03.node)) == data
    assert other.stats.disk_hits == 1 and other.stats.fetches == 0
    assert len(fake.requests) == 1


def test_the_host_of_the_revision_url_is_never_contacted(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    c01 = central(0)
    cache = make_cache(server, tmp_path / "cache")
    cache.histograms_json(f"http://attacker.invalid:1/mozilla-central/rev/{c01.node[:12]}")
    assert fake.count(raw_path("mozilla-central", c01.node[:12])) == 1


def test_slow_server_times_out_with_a_clear_error_and_nothing_cached(
        hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    c01 = central(0)
    path = raw_path("mozilla-central", c01.node[:12])
    fake.fail(path, forever="slow")
    cache = make_cache(server, tmp_path / "cache", read_timeout=0.2, retries=1)
    started = time.monotonic()
    with pytest.raises(HgwebError) as caught:
        cache.histograms_json(Revision("mozilla-central", c01.node[:12]))
    assert time.monotonic() - started < 2.0
    assert "timed out" in str(caught.value) and path in str(caught.value)
    assert fake.count(path) == 2  # first attempt + 1 retry
    assert files_under(tmp_path / "cache") == []
    assert cache.stats.fetch_failures == 1


def test_a_slow_answer_within_the_read_timeout_succeeds(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    fake.slow_seconds = 0.05
    c01 = central(0)
    fake.fail(raw_path("mozilla-central", c01.node[:12]), "slow")
    cache = make_cache(server, tmp_path / "cache", read_timeout=2.0)
    assert cache.histograms_json(Revision("mozilla-central", c01.node[:12])) == json.loads(fixture_bytes(23))


def test_server_errors_are_retried_with_backoff_until_success(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    c06 = central(5)
    path = raw_path("mozilla-central", c06.node[:12])
    fake.fail(path, "500", "500", "500")
    cache = make_cache(server, tmp_path / "cache", retries=3, backoff=0.05)
    started = time.monotonic()
    assert cache.histograms_json(Revision("mozilla-central", c06.node[:12])) == json.loads(fixture_bytes(25))
    assert fake.count(path) == 4
    assert time.monotonic() - started >= 0.05 + 0.1  # urllib3: 0, then backoff * 2, backoff * 4
    assert (tmp_path / "cache" / "mozilla-central" / c06.node[:12] / "Histograms.json").exists()


def test_server_errors_forever_give_a_clear_error_and_nothing_cached(
        hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    c06 = central(5)
    path = raw_path("mozilla-central", c06.node[:12])
    fake.fail(path, forever="500")
    cache = make_cache(server, tmp_path / "cache", retries=2)
    revision = Revision("mozilla-central", c06.node[:12])
    with pytest.raises(HgwebError) as caught:
        cache.histograms_json(revision)
    message = str(caught.value)
    assert "HTTP 500 after 2 retries" in message and "\n" not in message
    assert fake.count(path) == 3
    assert files_under(tmp_path / "cache") == []
    with pytest.raises(HgwebError):
        cache.histograms_json(revision)
    assert fake.count(path) == 6  # errors are not cached: every call asks again


def test_not_found_is_cached_negatively_without_retries(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    clock = FakeClock(1_000_000.0)
    changeset = "0123456789ab"
    path = raw_path("mozilla-central", changeset)
    cache = make_cache(server, tmp_path / "cache", retries=3, negative_ttl=60.0, clock=clock)
    with pytest.raises(RevisionNotFoundError) as caught:
        cache.histograms_json(Revision("mozilla-central", changeset))
    assert caught.value.category == "conversion_error"
    assert fake.count(path) == 1  # no retry on 404

    with pytest.raises(RevisionNotFoundError):
        cache.histograms_json(Revision("mozilla-central", changeset))
    assert fake.count(path) == 1
    assert cache.stats.negative_hits == 1 and cache.stats.not_found == 1

    # The negative cache on disk is one file, shared with other processes; no directory per revision.
    marker = tmp_path / "cache" / "not-found.json"
    assert json.loads(marker.read_text())["entries"][f"mozilla-central/{changeset}"]["at"] == clock.now
    assert not (tmp_path / "cache" / "mozilla-central").exists()
    other = make_cache(server, tmp_path / "cache", negative_ttl=60.0, clock=clock)
    with pytest.raises(RevisionNotFoundError):
        other.histograms_json(Revision("mozilla-central", changeset))
    assert fake.count(path) == 1


def test_the_negative_cache_is_bounded_in_entries_and_age(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    clock = FakeClock(1_000_000.0)
    cache = make_cache(server, tmp_path / "cache", negative_ttl=60.0, negative_max_entries=3, clock=clock)
    for n in range(5):
        clock.now += 1
        with pytest.raises(RevisionNotFoundError):
            cache.histograms_json(Revision(f"projects/random{n}", "abcdef012345"))
    entries = json.loads((tmp_path / "cache" / "not-found.json").read_text())["entries"]
    assert sorted(entries) == [f"projects/random{n}/abcdef012345" for n in (2, 3, 4)]  # the newest three
    assert len(cache._not_found) == 3
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".not-found.json.lock", "not-found.json"]
    clock.now += 120  # every entry is past its age: the next write drops them all
    with pytest.raises(RevisionNotFoundError):
        cache.histograms_json(Revision("projects/random9", "abcdef012345"))
    entries = json.loads((tmp_path / "cache" / "not-found.json").read_text())["entries"]
    assert sorted(entries) == ["projects/random9/abcdef012345"]


def test_negative_entries_expire_after_their_ttl(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    clock = FakeClock(1_000_000.0)
    repo = fake.repos["mozilla-central"]
    late = node_for("c08 pushed later")
    path = raw_path("mozilla-central", late[:12])
    cache = make_cache(server, tmp_path / "cache", negative_ttl=60.0, clock=clock)
    with pytest.raises(RevisionNotFoundError):
        cache.histograms_json(Revision("mozilla-central", late[:12]))

    repo.add("c08 pushed later", D0 + 11 * DAY, fixture_bytes(24))  # the changeset appears on the server
    clock.now += 59
    with pytest.raises(RevisionNotFoundError):
        cache.histograms_json(Revision("mozilla-central", late[:12]))
    assert fake.count(path) == 1

    clock.now += 2
    assert cache.histograms_json(Revision("mozilla-central", late[:12])) == json.loads(fixture_bytes(24))
    assert fake.count(path) == 2
    assert json.loads((tmp_path / "cache" / "not-found.json").read_text())["entries"] == {}


@pytest.mark.parametrize("fault, reason", [
    ("invalid_json", "not valid JSON"),
    ("json_list", "top level is a JSON list"),
    ("no_kind", "has no string \"kind\""),
])
def test_invalid_bodies_are_rejected_and_not_cached(hg: tuple[FakeHg, str], tmp_path: Path, fault: str,
                                                    reason: str) -> None:
    fake, server = hg
    c01 = central(0)
    path = raw_path("mozilla-central", c01.node[:12])
    fake.fail(path, fault)
    cache = make_cache(server, tmp_path / "cache")
    revision = Revision("mozilla-central", c01.node[:12])
    with pytest.raises(InvalidHgwebResponse) as caught:
        cache.histograms_json(revision)
    assert reason in str(caught.value) and "not cached" in str(caught.value)
    assert files_under(tmp_path / "cache") == []
    assert cache.stats.invalid_responses == 1
    assert cache.histograms_json(revision) == json.loads(fixture_bytes(23))  # asked again, now valid
    assert fake.count(path) == 2


def test_refused_connections_give_a_clear_error(tmp_path: Path) -> None:
    cache = make_cache(f"http://127.0.0.1:{unused_port()}", tmp_path / "cache", retries=2)
    with pytest.raises(HgwebError) as caught:
        cache.histograms_json("http://hg.mozilla.org/mozilla-central/rev/abcdef012345")
    message = str(caught.value)
    assert "could not connect after 2 retries" in message and "\n" not in message
    assert files_under(tmp_path / "cache") == []


def test_truncated_bodies_are_errors_and_not_cached(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    c01 = central(0)
    path = raw_path("mozilla-central", c01.node[:12])
    fake.fail(path, "truncated")
    cache = make_cache(server, tmp_path / "cache")
    with pytest.raises(HgwebError) as caught:
        cache.histograms_json(Revision("mozilla-central", c01.node[:12]))
    assert path in str(caught.value)
    assert files_under(tmp_path / "cache") == []


def test_offline_cache_answers_from_seeds_only(tmp_path: Path) -> None:
    cache = RevisionCache(None, tmp_path / "cache", (DEFAULT_SEED_DIR,))
    assert cache.histograms_json(FIXTURE_PING_REVISION) == json.loads(fixture_bytes(23))
    with pytest.raises(HgwebError) as caught:
        cache.histograms_json("http://hg.mozilla.org/mozilla-central/rev/abcdef012345")
    assert "offline" in str(caught.value)


def test_packaged_seed_serves_the_fixture_revisions_with_the_server_down(tmp_path: Path) -> None:
    cache = make_cache(f"http://127.0.0.1:{unused_port()}", tmp_path / "cache", seed_dirs=(DEFAULT_SEED_DIR,))
    for version, changeset in ((23, "a55c55edf302"), (24, "8d3810543edc"), (25, "ad0ae007aa9e")):
        url = f"https://hg.mozilla.org/releases/mozilla-release/rev/{changeset}"
        assert cache.histograms_json(url) == json.loads(fixture_bytes(version))
    assert cache.stats.seed_hits == 3 and cache.stats.fetches == 0
    assert files_under(tmp_path / "cache") == []
    assert (DEFAULT_SEED_DIR / "NOTICE.md").exists()


def test_cache_from_options_uses_the_packaged_seed(tmp_path: Path) -> None:
    cache = revision_cache_from_options({"server": None, "cache_dir": str(tmp_path / "c"), "retries": 1})
    assert cache.histograms_json(FIXTURE_PING_REVISION) == json.loads(fixture_bytes(23))
    assert cache.client is None


def test_memory_layer_is_a_bounded_lru(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    for version in (23, 24, 25):
        write_bytes_atomically(seed / "projects" / "cedar" / f"{version:012x}" / "Histograms.json", fixture_bytes(version))
    cache = RevisionCache(None, tmp_path / "cache", (seed,), memory_size=2)
    def read(version: int) -> None:
        cache.histograms_json(Revision("projects/cedar", f"{version:012x}"))

    for version in (23, 24, 25):
        read(version)
    assert cache.stats.seed_hits == 3
    read(24)  # still in memory, and now the most recently used
    assert cache.stats.memory_hits == 1
    read(23)  # evicted when 25 came: read again, evicting 25, the least recently used
    assert cache.stats.seed_hits == 4
    read(24)
    assert cache.stats.memory_hits == 2
    read(25)
    assert cache.stats.seed_hits == 5


def test_a_corrupt_disk_file_is_ignored_and_replaced(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    c01 = central(0)
    stored = tmp_path / "cache" / "mozilla-central" / c01.node[:12] / "Histograms.json"
    write_bytes_atomically(stored, b'{"torn": ')
    cache = make_cache(server, tmp_path / "cache")
    assert cache.histograms_json(Revision("mozilla-central", c01.node[:12])) == json.loads(fixture_bytes(23))
    assert cache.stats.corrupt_files == 1
    assert stored.read_bytes() == fixture_bytes(23)


@pytest.mark.parametrize("body, problem", [
    (b"[]", "JSON list"), (b"{}", "defines no histograms"), (b'{"A": 1}', "int, not an object"),
    (b'{"A": {"kind": 1}}', "no string"), (b"\xff\xfe", "not valid JSON"),
])
def test_histograms_json_validation(body: bytes, problem: str) -> None:
    with pytest.raises(InvalidHgwebResponse) as caught:
        parse_histograms_json(body, "test")
    assert problem in str(caught.value)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="read_timeout"):
        RevisionCache("http://127.0.0.1:9", "x", read_timeout=0)
    with pytest.raises(ValueError, match="retries"):
        RevisionCache("http://127.0.0.1:9", "x", retries=-1)


# --------------------------------------------------------------------------- several processes


def _fill_cache_in_a_process(server: str, cache_dir: str, changesets: list[str], barrier: Any, results: Any) -> None:
    cache = RevisionCache(server, cache_dir, memory_size=0, read_timeout=5.0, retries=0)
    barrier.wait(timeout=30)
    sizes = [len(cache.histograms_json(Revision("mozilla-central", changeset))) for changeset in changesets]
    results.put((os.getpid(), sizes))


def test_two_processes_fill_the_same_cache_concurrently(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    fake.delay_seconds = 0.2  # both processes miss the disk and write the same files at the same time
    changesets = [central(i).node[:12] for i in (0, 2, 5)]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_fill_cache_in_a_process,
                               args=(server, str(tmp_path / "cache"), changesets, barrier, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    expected_sizes = [len(json.loads(fixture_bytes(version))) for version in (23, 24, 25)]
    assert [sizes for _, sizes in outcomes] == [expected_sizes, expected_sizes]
    assert fake.count_command("raw-file") > 3  # some files were written by both processes
    for changeset, version in zip(changesets, (23, 24, 25)):
        assert (tmp_path / "cache" / "mozilla-central" / changeset / "Histograms.json").read_bytes() == \
            fixture_bytes(version)
    assert [name for name in files_under(tmp_path / "cache") if name.endswith(".tmp")] == []


def _rewrite_in_a_process(path: str, rounds: int) -> None:
    bodies = [fixture_bytes(23), fixture_bytes(25)]
    for round_number in range(rounds):
        write_bytes_atomically(Path(path), bodies[round_number % 2])


def _read_in_a_process(path: str, seconds: float, results: Any) -> None:
    reads = torn = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            parse_histograms_json(Path(path).read_bytes(), path)
            reads += 1
        except InvalidHgwebResponse:
            torn += 1
    results.put((reads, torn))


def test_readers_never_see_a_partial_file_while_another_process_rewrites_it(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "mozilla-central" / "abcdef012345" / "Histograms.json"
    write_bytes_atomically(path, fixture_bytes(24))
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    reader = context.Process(target=_read_in_a_process, args=(str(path), 1.5, results))
    writer = context.Process(target=_rewrite_in_a_process, args=(str(path), 60))
    reader.start()
    writer.start()
    writer.join(timeout=60)
    reads, torn = results.get(timeout=60)
    reader.join(timeout=10)
    assert writer.exitcode == 0 and reader.exitcode == 0
    assert reads > 0 and torn == 0
    assert path.read_bytes() in (fixture_bytes(23), fixture_bytes(25))
    assert [p.name for p in path.parent.iterdir()] == ["Histograms.json"]


# --------------------------------------------------------------------------- hgweb formats


def test_hgweb_json_formats_parse() -> None:
    repo = build_central()
    page = json.dumps({"entries": [repo.entry(2), repo.entry(0)]}).encode()
    assert [(c.node, c.date) for c in parse_hgweb_filelog(page, "t")] == \
        [(repo.changesets[2].node, D0 + 5 * DAY), (repo.changesets[0].node, D0)]
    change = parse_hgweb_changeset(json.dumps(repo.entry(3)).encode(), "t")
    assert (change.node, change.date) == (repo.changesets[3].node, D0 + 6 * DAY)
    for bad in (b"<html>", b"[]", b'{"entries": {}}', b'{"entries": [{"node": "abc", "date": [0, 0]}]}',
                b'{"entries": [{"node": "' + b"a" * 40 + b'", "date": "2013-05-13"}]}'):
        with pytest.raises(InvalidHgwebResponse):
            parse_hgweb_filelog(bad, "t")


def test_channels_and_build_ids() -> None:
    assert repository_for_channel("nightly") == "mozilla-central"
    assert repository_for_channel("aurora") == "releases/mozilla-aurora"
    assert repository_for_channel("beta") == "releases/mozilla-beta"
    assert repository_for_channel("release") == "releases/mozilla-release"
    assert repository_for_channel("esr", "24.1.0") == "releases/mozilla-esr24"
    assert repository_for_channel("esr", "17.0.9esr") == "releases/mozilla-esr17"
    assert repository_for_channel("esr", None) is None
    assert repository_for_channel("default") is None and repository_for_channel(None) is None
    assert build_time("20130814063812") == datetime(2013, 8, 14, 6, 38, 12, tzinfo=timezone.utc).timestamp()
    assert build_time(20130814063812) == build_time("20130814063812")
    for bad in ("2013081406381", "20131314063812", "2013-08-14", None, "", "201308140638120"):
        assert build_time(bad) is None


# --------------------------------------------------------------------------- history


def make_resolver(server: str | None, cache_dir: Path, clock: FakeClock | None = None, seed_dirs: tuple = (),
                  **settings: Any) -> SpecResolver:
    cache_settings = {"clock": clock} if clock else {}
    cache = make_cache(server, cache_dir, seed_dirs=seed_dirs, **cache_settings)
    return SpecResolver(cache, **settings)


def test_spec_at_a_build_date_is_the_latest_change_at_or_before_it(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    repo = fake.repos["mozilla-central"]
    resolver = make_resolver(server, tmp_path / "cache", page_size=2)
    checked = 0
    for index, changeset in enumerate(repo.changesets):
        for when in (changeset.date, changeset.date + 3600):
            resolved = resolver.spec_at("mozilla-central", when)
            expected_change = repo.changesets[repo.file_change_at(index)]
            assert resolved.revision == Revision("mozilla-central", expected_change.node)
            assert resolved.histograms == json.loads(repo.file_at(index))
            assert resolved.how == "build-date"
            checked += 1
    assert checked == 14
    with pytest.raises(RecordError) as caught:
        resolver.spec_at("mozilla-central", D0 - 1)
    assert caught.value.category == "missing_revision"
    # page_size 2 and 3 changes: each page starts at the oldest node of the previous one, and the
    # last page (only that node) shows that nothing older exists.
    assert fake.count_command("json-log") == 3
    assert fake.count(f"/mozilla-central/json-log/{repo.changesets[2].node}/{HISTOGRAMS_JSON_PATH}") == 1
    assert fake.count(f"/mozilla-central/json-log/{repo.changesets[0].node}/{HISTOGRAMS_JSON_PATH}") == 1
    history = json.loads((tmp_path / "cache" / "mozilla-central" / "_history.json").read_text())
    assert [c["node"] for c in history["changes"]] == [repo.changesets[i].node for i in (0, 2, 5)]


def test_a_changeset_that_is_not_a_change_resolves_by_its_date(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    repo = fake.repos["mozilla-central"]
    unknown = repo.changesets[3]  # "c04 unrelated": not a Histograms.json change, not a fixture revision
    resolver = make_resolver(server, tmp_path / "cache", revision_lookup="date")

    resolved = resolver.spec_for_revision(f"http://hg.mozilla.org/mozilla-central/rev/{unknown.node[:12]}")

    assert resolved.how == "revision-by-date"
    assert resolved.requested == Revision("mozilla-central", unknown.node[:12])
    # What hgweb itself serves at that changeset (the model's exact answer) ...
    exact = make_cache(server, tmp_path / "exact").histograms_json(Revision("mozilla-central", unknown.node))
    assert resolved.histograms == exact
    # ... is the change dated latest at or before it.
    before = [c for c in repo.changesets if c.histograms is not None and c.date <= unknown.date]
    assert resolved.revision.changeset == max(before, key=lambda c: c.date).node
    assert fake.count(f"/mozilla-central/json-rev/{unknown.node[:12]}") == 1
    assert fake.count(raw_path("mozilla-central", unknown.node[:12])) == 0
    changeset_file = tmp_path / "cache" / "mozilla-central" / unknown.node[:12] / "changeset.json"
    assert json.loads(changeset_file.read_text())["node"] == unknown.node


def test_exact_lookup_fetches_the_revision_itself(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    unknown = fake.repos["mozilla-central"].changesets[3]
    resolver = make_resolver(server, tmp_path / "cache")
    resolved = resolver.spec_for_revision(Revision("mozilla-central", unknown.node[:12]))
    assert resolved.how == "revision" and resolved.histograms == json.loads(fixture_bytes(24))
    assert fake.count(raw_path("mozilla-central", unknown.node[:12])) == 1
    assert fake.count_command("json-rev") == 0


def test_history_is_refreshed_after_its_ttl(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    repo = fake.repos["mozilla-central"]
    clock = FakeClock(D0 + 20 * DAY)
    resolver = make_resolver(server, tmp_path / "cache", clock, history_ttl=3600.0, page_size=2)
    at_end = clock.now - DAY
    assert resolver.spec_at("mozilla-central", at_end).histograms == json.loads(fixture_bytes(25))
    first_reads = fake.count_command("json-log")

    # A change authored before that date lands afterwards.
    landed = repo.add("c08 backout of aurora 25 probes", D0 + 15 * DAY, fixture_bytes(24))
    clock.now += 1800
    assert resolver.spec_at("mozilla-central", at_end).histograms == json.loads(fixture_bytes(25))
    assert fake.count_command("json-log") == first_reads  # still fresh: not asked

    clock.now += 1801
    resolved = resolver.spec_at("mozilla-central", at_end)
    assert resolved.revision.changeset == landed.node
    assert resolved.histograms == json.loads(fixture_bytes(24))
    assert fake.count_command("json-log") == first_reads + 1  # incremental: one page reached a known change
    assert len(resolver.history("mozilla-central").changes) == 4


def test_a_build_newer_than_the_history_forces_a_refresh(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    repo = fake.repos["mozilla-central"]
    clock = FakeClock(D0 + 12 * DAY)
    resolver = make_resolver(server, tmp_path / "cache", clock, history_ttl=DAY, min_refresh_interval=600.0)
    resolver.history("mozilla-central")
    first_reads = fake.count_command("json-log")
    landed = repo.add("c08 new probes", D0 + 12 * DAY + 60, fixture_bytes(23))
    clock.now += 3600
    resolved = resolver.spec_at("mozilla-central", D0 + 12 * DAY + 1800)  # built after the history was read
    assert resolved.revision.changeset == landed.node
    assert fake.count_command("json-log") == first_reads + 1
    read_at = clock.now
    clock.now += 60
    resolver.spec_at("mozilla-central", read_at + 30)  # newer again, but within min_refresh_interval
    resolver.spec_at("mozilla-central", clock.now + DAY)  # from the future: reading again cannot help
    assert fake.count_command("json-log") == first_reads + 1
    clock.now += 600
    resolver.spec_at("mozilla-central", read_at + 30)
    assert fake.count_command("json-log") == first_reads + 2


def test_a_stale_history_is_used_when_the_server_fails(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    clock = FakeClock(D0 + 20 * DAY)
    resolver = make_resolver(server, tmp_path / "cache", clock, history_ttl=60.0)
    resolver.history("mozilla-central")
    fake.fail(f"/mozilla-central/json-log/tip/{HISTOGRAMS_JSON_PATH}", forever="500")
    clock.now += 120
    resolved = resolver.spec_at("mozilla-central", D0 + 8 * DAY)
    assert resolved.histograms == json.loads(fixture_bytes(24))
    assert resolver.cache.stats.history_failures == 1
    failures = fake.count(f"/mozilla-central/json-log/tip/{HISTOGRAMS_JSON_PATH}")
    resolver.spec_at("mozilla-central", D0 + 8 * DAY)
    assert fake.count(f"/mozilla-central/json-log/tip/{HISTOGRAMS_JSON_PATH}") == failures  # not hammered


def test_no_history_and_a_failing_server_is_a_clear_error(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    fake.fail(f"/mozilla-central/json-log/tip/{HISTOGRAMS_JSON_PATH}", "invalid_json")
    resolver = make_resolver(server, tmp_path / "cache")
    with pytest.raises(InvalidHgwebResponse) as caught:
        resolver.spec_at("mozilla-central", D0 + 8 * DAY)
    assert "not an hgweb JSON file log" in str(caught.value)
    assert not (tmp_path / "cache" / "mozilla-central" / "_history.json").exists()


def test_an_unknown_repository_has_an_empty_history(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    _, server = hg
    resolver = make_resolver(server, tmp_path / "cache")
    with pytest.raises(RecordError) as caught:
        resolver.spec_at("projects/nonexistent", D0)
    assert caught.value.category == "missing_revision"


def test_pings_without_a_revision_resolve_by_channel_and_build_id(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    resolver = make_resolver(server, tmp_path / "cache")
    build = datetime.fromtimestamp(D0 + 6 * DAY, timezone.utc).strftime("%Y%m%d%H%M%S")
    resolved = resolver.resolve(None, {"appUpdateChannel": "nightly", "appBuildID": build})
    assert resolved.how == "build-date" and resolved.histograms == json.loads(fixture_bytes(24))
    resolved = resolver.resolve("", {"appUpdateChannel": "nightly", "appBuildID": "junk",
                                     "platformBuildID": build})
    assert resolved.histograms == json.loads(fixture_bytes(24))

    for info in ({"appUpdateChannel": "default", "appBuildID": build},
                 {"appUpdateChannel": "nightly"},
                 {"appUpdateChannel": "nightly", "appBuildID": "20120101000000"},
                 {"appUpdateChannel": "esr", "appBuildID": build}):
        with pytest.raises(RecordError) as caught:
            resolver.resolve(None, info)
        assert caught.value.category == "missing_revision", info


def test_a_ping_revision_wins_over_its_build_id(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    c01 = fake.repos["mozilla-central"].changesets[0]
    resolver = make_resolver(server, tmp_path / "cache")
    info = {"appUpdateChannel": "nightly", "appBuildID": "20130610000000"}
    resolved = resolver.resolve(f"https://hg.mozilla.org/mozilla-central/rev/{c01.node[:12]}", info)
    assert resolved.how == "revision" and resolved.histograms == json.loads(fixture_bytes(23))
    with pytest.raises(RecordError) as caught:
        resolver.resolve("/rev/", info)
    assert caught.value.category == "missing_revision_repo"


def test_resolution_works_offline_from_a_seeded_cache(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    repo = fake.repos["mozilla-central"]
    unknown = repo.changesets[4]  # "c05 unrelated"
    online = make_resolver(server, tmp_path / "seed", revision_lookup="date")
    online.spec_for_revision(Revision("mozilla-central", unknown.node[:12]))  # history, date, spec
    for index in (0, 2, 5):
        online.spec_at("mozilla-central", repo.changesets[index].date)

    # A fresh process, the server gone, the filled cache as a read-only seed.
    offline = make_resolver(f"http://127.0.0.1:{unused_port()}", tmp_path / "fresh", seed_dirs=(tmp_path / "seed",))
    resolved = offline.spec_for_revision(Revision("mozilla-central", unknown.node[:12]))
    assert resolved.how == "revision-by-date"  # the exact fetch failed; the cached date and history answered
    assert resolved.histograms == json.loads(repo.file_at(4))
    build = datetime.fromtimestamp(D0 + 9 * DAY + 60, timezone.utc).strftime("%Y%m%d%H%M%S")
    resolved = offline.resolve(None, {"appUpdateChannel": "nightly", "appBuildID": build})
    assert resolved.histograms == json.loads(fixture_bytes(25))
    no_server = make_resolver(None, tmp_path / "fresh2", seed_dirs=(tmp_path / "seed",))
    assert no_server.spec_at("mozilla-central", D0 + DAY).histograms == json.loads(fixture_bytes(23))
    assert files_under(tmp_path / "fresh2") == []


def test_offline_without_history_is_a_clear_error(tmp_path: Path) -> None:
    resolver = make_resolver(None, tmp_path / "cache", seed_dirs=(DEFAULT_SEED_DIR,))
    with pytest.raises(HgwebError) as caught:
        resolver.resolve(None, {"appUpdateChannel": "release", "appBuildID": "20130814063812"})
    assert "no Histograms.json history of releases/mozilla-release" in str(caught.value)
    # The fixture ping's own revision needs no history.
    assert resolver.resolve(FIXTURE_PING_REVISION, {}).histograms == json.loads(fixture_bytes(23))


def test_history_files_round_trip_and_reject_garbage(tmp_path: Path) -> None:
    history = HistogramsHistory("mozilla-central", (), 5.0)
    assert HistogramsHistory.from_json(history.to_json(), "mozilla-central", "t") == history
    with pytest.raises(InvalidHgwebResponse):
        HistogramsHistory.from_json(history.to_json(), "projects/cedar", "t")
    with pytest.raises(InvalidHgwebResponse):
        HistogramsHistory.from_json(b"{}", "mozilla-central", "t")


def test_date_lookup_falls_back_to_the_exact_fetch(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    unknown = fake.repos["mozilla-central"].changesets[3]
    fake.fail(f"/mozilla-central/json-rev/{unknown.node[:12]}", forever="500")
    resolver = make_resolver(server, tmp_path / "cache", revision_lookup="date")
    resolved = resolver.spec_for_revision(Revision("mozilla-central", unknown.node[:12]))
    assert resolved.how == "revision" and resolved.histograms == json.loads(fixture_bytes(24))

    with pytest.raises(RevisionNotFoundError):  # unknown everywhere: json-rev and raw-file both 404
        resolver.spec_for_revision(Revision("mozilla-central", "0123456789ab"))
    assert fake.count("/mozilla-central/json-rev/0123456789ab") == 1


def test_exact_lookup_reports_the_exact_error_when_nothing_else_helps(tmp_path: Path) -> None:
    resolver = SpecResolver(make_cache(f"http://127.0.0.1:{unused_port()}", tmp_path / "cache", retries=0))
    with pytest.raises(HgwebError) as caught:
        resolver.spec_for_revision("https://hg.mozilla.org/mozilla-central/rev/0123456789ab")
    assert "/raw-file/0123456789ab/" in str(caught.value)


def test_history_paging_stops_at_the_page_limit(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    repo = fake.repos["mozilla-central"]
    resolver = make_resolver(server, tmp_path / "cache", page_size=2, max_pages=1)
    history = resolver.history("mozilla-central")
    assert not history.complete
    assert [c.node for c in history.changes] == [repo.changesets[i].node for i in (2, 5)]
    with pytest.raises(RecordError):  # the oldest change is unknown: nothing matches
        resolver.spec_at("mozilla-central", D0 + DAY)
    resolver.max_pages = 10
    completed = resolver.refresh_history("mozilla-central", known=history)  # an incomplete history is re-read
    assert completed.complete and [c.node for c in completed.changes] == [repo.changesets[i].node for i in (0, 2, 5)]
    assert resolver.refresh_history("mozilla-central", full=True).changes == completed.changes


def test_an_unwritable_cache_dir_degrades_to_memory(hg: tuple[FakeHg, str], tmp_path: Path) -> None:
    fake, server = hg
    c01 = central(0)
    not_a_directory = tmp_path / "cache"
    not_a_directory.write_text("a file where the cache directory should be")
    cache = make_cache(server, not_a_directory)
    revision = Revision("mozilla-central", c01.node[:12])
    assert cache.histograms_json(revision) == json.loads(fixture_bytes(23))
    assert cache.stats.disk_write_failures == 1
    assert cache.histograms_json(revision) == json.loads(fixture_bytes(23))
    assert cache.stats.memory_hits == 1 and fake.count(raw_path("mozilla-central", c01.node[:12])) == 1
