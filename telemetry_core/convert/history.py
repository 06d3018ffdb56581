"""Which Histograms.json a ping was recorded with: by revision, or by build date.

A repository's *history* is the list of changesets that changed
``toolkit/components/telemetry/Histograms.json``, with their dates, read from
hgweb's log of that file in its JSON style::

    GET <server>/<repo path>/json-log/tip/toolkit/components/telemetry/Histograms.json?revcount=N
    {"entries": [{"node": "<40 hex>", "date": [<unix seconds>, <tz offset>], ...}, ...]}

(newest first; ``json-log/<rev>/<file>`` is hgweb's ``filelog`` command, see
Mercurial's ``hgweb/webcommands.py`` and ``templates/json/map``).  Pages are
fetched back from the oldest node of the previous page until a page brings
nothing new.  The history is kept on disk as
``<cache_dir>/<repo path>/_history.json`` and refreshed after ``history_ttl``
seconds (only the new head of the log is fetched).

"The spec at time T" is the Histograms.json of the latest change dated at or
before T.  A changeset's date comes from ``json-rev/<hex>``
(``{"node": ..., "date": [<unix seconds>, <tz offset>], ...}``), cached as
``<cache_dir>/<repo path>/<changeset[:12]>/changeset.json``.  Seed
directories may hold both kinds of file, so resolution works offline.

:class:`SpecResolver` is what the converter calls: it resolves a ping's
``info`` (``revision`` when present, otherwise channel + build id) to a
:class:`ResolvedSpec`.
"""

from __future__ import annotations

import bisect
import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Mapping

from ..errors import RecordError
from .revisions import (HISTOGRAMS_JSON_PATH, HgwebError, InvalidHgwebResponse, Revision, RevisionCache,
                        RevisionNotFoundError, as_revision, check_repo_path, entry_directory, inside,
                        parse_revision, read_bytes_if_exists)

log = logging.getLogger(__name__)

HISTORY_FILE = "_history.json"
CHANGESET_FILE = "changeset.json"

#: ``appUpdateChannel`` → repository path of the builds on that channel.
CHANNEL_REPOSITORIES: dict[str, str] = {
    "nightly": "mozilla-central",
    "aurora": "releases/mozilla-aurora",
    "beta": "releases/mozilla-beta",
    "release": "releases/mozilla-release",
}

_NODE = re.compile(r"[0-9a-f]{40}")
_BUILD_ID = re.compile(r"\d{14}")
_MAJOR_VERSION = re.compile(r"(\d{1,3})\.")

How = Literal["revision", "revision-by-date", "build-date"]


# --------------------------------------------------------------------------- history


@dataclass(frozen=True)
class HistogramsChange:
    """A changeset that changed Histograms.json: full ``node`` and its
    ``date`` (unix seconds, UTC; hg's author date)."""

    node: str
    date: float


@dataclass(frozen=True)
class HistogramsHistory:
    """The changes to Histograms.json in one repository.

    ``changes`` are in hgweb's file-log order, oldest first; ``fetched_at``
    is when the log was read (unix seconds); ``complete`` is false when
    paging stopped at the page limit (older changes are missing).
    """

    repo_path: str
    changes: tuple[HistogramsChange, ...]
    fetched_at: float
    complete: bool = True

    def change_at(self, when: float) -> HistogramsChange | None:
        """The latest change dated at or before ``when`` (ties: the later one
        in the log), or ``None`` when every change is later."""
        index = bisect.bisect_right(self._dates, when)
        return self._by_date[index - 1] if index else None

    @cached_property
    def _by_date(self) -> list[HistogramsChange]:
        order = sorted(range(len(self.changes)), key=lambda i: (self.changes[i].date, i))
        return [self.changes[i] for i in order]

    @cached_property
    def _dates(self) -> list[float]:
        return [change.date for change in self._by_date]

    def to_json(self) -> bytes:
        """The on-disk form."""
        return json.dumps({
            "repo_path": self.repo_path,
            "file": HISTOGRAMS_JSON_PATH,
            "fetched_at": self.fetched_at,
            "complete": self.complete,
            "changes": [{"node": change.node, "date": change.date} for change in self.changes],
        }, indent=0).encode()

    @classmethod
    def from_json(cls, body: bytes, repo_path: str, source: str) -> HistogramsHistory:
        """Read the on-disk form; raises :class:`InvalidHgwebResponse` when it is not one."""
        try:
            data = json.loads(body)
            if data["repo_path"] != repo_path:
                raise ValueError(f"it is the history of {data['repo_path']!r}")
            changes = tuple(_change(item["node"], item["date"]) for item in data["changes"])
            return cls(repo_path, changes, float(data["fetched_at"]), bool(data.get("complete", True)))
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidHgwebResponse(f"{source} is not a Histograms.json history: {error}", source) from error


def _change(node: object, date: object) -> HistogramsChange:
    if not isinstance(node, str) or not _NODE.fullmatch(node):
        raise ValueError(f"node {node!r:.60} is not 40 hex digits")
    return HistogramsChange(node, _seconds(date))


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"date {value!r:.60} is not a number")
    return float(value)


def _hg_date(value: object) -> float:
    """hgweb's JSON date ``[unix seconds, tz offset]`` → unix seconds (UTC)."""
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"date {value!r:.60} is not [seconds, offset]")
    return _seconds(value[0])


def parse_hgweb_filelog(body: bytes, source: str) -> list[HistogramsChange]:
    """Parse one page of ``json-log/<rev>/<file>`` (hgweb's JSON ``filelog``).

    :return: the entries as served, newest first.
    :raises InvalidHgwebResponse: the body is not such a page.
    """
    try:
        data = json.loads(body)
        entries = data["entries"]
        if not isinstance(entries, list):
            raise TypeError("\"entries\" is not a list")
        return [_change(entry["node"], _hg_date(entry["date"])) for entry in entries]
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidHgwebResponse(
            f"{source} is not an hgweb JSON file log ({type(error).__name__}: {error}); "
            "the server may lack hgweb's json style", source) from error


def parse_hgweb_changeset(body: bytes, source: str) -> HistogramsChange:
    """Parse ``json-rev/<hex>`` (hgweb's JSON ``changeset``) into node and date."""
    try:
        data = json.loads(body)
        return _change(data["node"], _hg_date(data["date"]))
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidHgwebResponse(
            f"{source} is not an hgweb JSON changeset ({type(error).__name__}: {error})", source) from error


# --------------------------------------------------------------------------- ping info


def repository_for_channel(channel: object, version: object = None) -> str | None:
    """The repository a build on ``channel`` came from, or ``None`` when unknown.

    ``esr`` maps to ``releases/mozilla-esr<major>`` from ``version``
    (``"24.1.0"`` → ``releases/mozilla-esr24``).
    """
    if not isinstance(channel, str):
        return None
    if channel == "esr":
        match = _MAJOR_VERSION.match(version) if isinstance(version, str) else None
        return f"releases/mozilla-esr{int(match[1])}" if match else None
    return CHANNEL_REPOSITORIES.get(channel)


def build_time(build_id: object) -> float | None:
    """``appBuildID`` ``YYYYMMDDhhmmss`` → unix seconds (read as UTC), or ``None``."""
    if isinstance(build_id, int):
        build_id = str(build_id)
    if not isinstance(build_id, str) or not _BUILD_ID.fullmatch(build_id):
        return None
    try:
        return datetime.strptime(build_id, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class ResolvedSpec:
    """The Histograms.json a ping was recorded with.

    ``histograms``: the definitions (shared: read-only); ``revision``: the
    changeset they were read at; ``how``: ``"revision"`` (the ping's own
    revision), ``"revision-by-date"`` (the latest change at or before the
    ping's changeset's date) or ``"build-date"`` (no revision in the ping:
    channel + build id); ``requested``: the ping's revision, if any.
    """

    histograms: dict[str, dict[str, Any]]
    revision: Revision
    how: How
    requested: Revision | None = None


class SpecResolver:
    """Resolves pings to Histograms.json through a :class:`RevisionCache` and
    each repository's Histograms.json history.

    :param cache: the revision cache (its server, client, dirs and stats are used).
    :param history_ttl: seconds before a repository's history is re-read.
    :param page_size: ``revcount`` per hgweb log page.
    :param max_pages: pages read per history refresh at most.
    :param min_refresh_interval: seconds between two history reads forced
        by a build newer than the history (``history_ttl`` bounds the rest).
    :param revision_lookup: ``"exact"`` (default): a ping's revision is
        fetched as is (``raw-file``), and only when that fails is it resolved
        by date from *cached* history and changeset dates; ``"date"``: resolve
        by date first (``json-rev`` + history, one Histograms.json stored per
        change instead of per changeset), the exact fetch as the fallback.
    """

    def __init__(self, cache: RevisionCache, *, history_ttl: float = 6 * 3600.0, page_size: int = 200,
                 max_pages: int = 100, min_refresh_interval: float = 300.0,
                 revision_lookup: Literal["exact", "date"] = "exact") -> None:
        if revision_lookup not in ("exact", "date"):
            raise ValueError(f"revision_lookup must be 'exact' or 'date', got {revision_lookup!r}")
        if page_size < 2 or max_pages < 1 or history_ttl < 0 or min_refresh_interval < 0:
            raise ValueError("page_size must be >= 2, max_pages >= 1, history_ttl and min_refresh_interval >= 0")
        self.cache = cache
        self.history_ttl = history_ttl
        self.page_size = page_size
        self.max_pages = max_pages
        self.min_refresh_interval = min_refresh_interval
        self.revision_lookup = revision_lookup
        self._histories: dict[str, HistogramsHistory] = {}
        self._history_failed_at: dict[str, float] = {}
        self._dates: OrderedDict[tuple[str, str], HistogramsChange] = OrderedDict()
        self._lock = threading.Lock()

    # -- what the converter calls

    def resolve(self, revision: str | None, info: Mapping[str, Any]) -> ResolvedSpec:
        """The spec of a ping from its ``info.revision`` or, when that is absent
        (``None`` or ``""``), from ``info``'s channel + build id.

        :raises RecordError: ``missing_revision``/``missing_revision_repo`` for
            bad revision URLs or when nothing matches; ``conversion_error``
            (:class:`RevisionNotFoundError`) when the server says not found.
        :raises HgwebError: the server was needed and failed.
        """
        if revision is not None and revision != "":
            return self.spec_for_revision(parse_revision(revision))
        return self.spec_for_build(info)

    def spec_for_revision(self, revision: Revision | str) -> ResolvedSpec:
        """The spec at ``revision``; see ``revision_lookup`` for the order of attempts."""
        revision = as_revision(revision)
        cached = self.cache.cached_histograms_json(revision)
        if cached is not None:
            return ResolvedSpec(cached, revision, "revision", revision)
        if self.revision_lookup == "date":
            try:
                return self.spec_by_date(revision)
            except (HgwebError, RecordError) as error:
                log.info("resolving %s by date failed (%s); fetching it exactly", revision, error)
            return self._exact(revision)
        try:
            return self._exact(revision)
        except (HgwebError, RevisionNotFoundError) as exact_error:
            try:
                return self.spec_by_date(revision, use_network=False)
            except (HgwebError, RecordError):
                raise exact_error from None

    def _exact(self, revision: Revision) -> ResolvedSpec:
        return ResolvedSpec(self.cache.histograms_json(revision), revision, "revision", revision)

    def spec_for_build(self, info: Mapping[str, Any]) -> ResolvedSpec:
        """The spec in effect when a build without ``info.revision`` was made:
        repository from ``appUpdateChannel`` (+ ``appVersion`` for esr), time
        from ``appBuildID`` (or ``platformBuildID``).

        :raises RecordError: ``missing_revision`` when the channel, build id or
            history gives no answer.
        """
        channel, version = info.get("appUpdateChannel"), info.get("appVersion")
        repo_path = repository_for_channel(channel, version)
        if repo_path is None:
            raise RecordError("missing_revision", f"no info.revision, and channel {channel!r:.40} "
                              f"(version {version!r:.40}) maps to no repository")
        when = build_time(info.get("appBuildID"))
        if when is None:
            when = build_time(info.get("platformBuildID"))
        if when is None:
            raise RecordError("missing_revision", f"no info.revision, and build id {info.get('appBuildID')!r:.40} "
                              "is not YYYYMMDDhhmmss")
        return self.spec_at(repo_path, when)

    # -- by date

    def spec_at(self, repo_path: str, when: float | datetime, *, use_network: bool = True) -> ResolvedSpec:
        """The Histograms.json of the latest change in ``repo_path`` at or before ``when``.

        :raises RecordError: ``missing_revision`` when no change is that old.
        :raises HgwebError: no history is available (not cached, server failed).
        """
        check_repo_path(repo_path)
        when = when.timestamp() if isinstance(when, datetime) else float(when)
        history = self.history(repo_path, use_network=use_network, needed_at=when)
        change = history.change_at(when)
        if change is None:
            raise RecordError("missing_revision", f"no Histograms.json change in {repo_path} at or before "
                              f"{_iso(when)} (history has {len(history.changes)} changes)")
        revision = Revision(repo_path, change.node)
        if use_network:
            histograms = self.cache.histograms_json(revision)
        else:
            histograms = self.cache.cached_histograms_json(revision)
            if histograms is None:
                raise HgwebError(f"Histograms.json for {revision} (in effect at {_iso(when)}) is not cached")
        return ResolvedSpec(histograms, revision, "build-date")

    def spec_by_date(self, revision: Revision | str, *, use_network: bool = True) -> ResolvedSpec:
        """Resolve ``revision`` through its changeset date and the history of
        its repository (no Histograms.json is fetched at ``revision`` itself)."""
        revision = as_revision(revision)
        date = self.changeset_date(revision, use_network=use_network)
        resolved = self.spec_at(revision.repo_path, date, use_network=use_network)
        return ResolvedSpec(resolved.histograms, resolved.revision, "revision-by-date", revision)

    def changeset_date(self, revision: Revision | str, *, use_network: bool = True) -> float:
        """The (author) date of ``revision`` in unix seconds: memory, disk,
        seeds, then ``json-rev/<hex>``.

        :raises RevisionNotFoundError: the server does not know the changeset.
        :raises HgwebError: not cached and the server failed (or offline).
        """
        revision = as_revision(revision)
        key = (revision.repo_path, revision.cache_key)
        with self._lock:
            known = self._dates.get(key)
        if known is None:
            known = self._read_changeset(revision) or self._fetch_changeset(revision, use_network)
            with self._lock:
                self._dates[key] = known
                while len(self._dates) > 4096:
                    self._dates.popitem(last=False)
        return known.date

    # -- history

    def history(self, repo_path: str, *, use_network: bool = True, needed_at: float | None = None
                ) -> HistogramsHistory:
        """The Histograms.json history of ``repo_path``.

        Fresh copies come from memory or disk: younger than ``history_ttl``
        and, when ``needed_at`` (a build time) is given and already past,
        read after it or less than ``min_refresh_interval`` ago.  Otherwise
        the log is re-read from the server (unless ``use_network`` is false,
        or it failed less than ``negative_ttl`` ago), and when that fails a
        stale or seeded copy is used.

        :raises HgwebError: no copy at all and the server failed.
        """
        check_repo_path(repo_path)
        now = self.cache.clock()
        with self._lock:
            known = self._histories.get(repo_path)
        if known is None or not self._is_fresh(known, now, needed_at):
            known = self._freshest_copy(repo_path)
        if known is not None and self._is_fresh(known, now, needed_at):
            return known
        if use_network and self.cache.client is not None and not self._recently_failed(repo_path, now):
            try:
                return self.refresh_history(repo_path, known=known)
            except HgwebError as error:
                with self._lock:
                    self._history_failed_at[repo_path] = now
                if known is None:
                    raise
                log.warning("using the Histograms.json history of %s read at %s: %s",
                            repo_path, _iso(known.fetched_at), error)
        if known is None:
            raise HgwebError(f"no Histograms.json history of {repo_path} is cached and the server is "
                             f"{'not configured' if self.cache.client is None else 'not used now'}; "
                             "seed the cache or configure convert.histograms.server")
        return known

    def refresh_history(self, repo_path: str, *, known: HistogramsHistory | None = None,
                        full: bool = False) -> HistogramsHistory:
        """Read the log from the server now and store it.

        Only the part newer than ``known`` is read, unless ``full`` or
        ``known`` is incomplete (then the whole log is read again).  A 404
        for the log (no such repository or file) gives an empty history.
        """
        check_repo_path(repo_path)
        if self.cache.client is None:
            raise HgwebError(f"cannot refresh the Histograms.json history of {repo_path}: offline")
        if full or (known is not None and not known.complete):
            known = None
        self.cache.stats.add("history_fetches")
        try:
            history = self._read_log(repo_path, known)
        except HgwebError:
            self.cache.stats.add("history_failures")
            raise
        self.cache.write_to_disk(self._history_path(self.cache.cache_dir, repo_path), history.to_json())
        with self._lock:
            self._histories[repo_path] = history
            self._history_failed_at.pop(repo_path, None)
        return history

    def _read_log(self, repo_path: str, known: HistogramsHistory | None) -> HistogramsHistory:
        """Page back through ``json-log`` until a page brings nothing new or
        reaches a change already in ``known``."""
        client = self.cache.client
        assert client is not None
        known_nodes = {change.node for change in known.changes} if known else set()
        seen: set[str] = set()
        new_changes: list[HistogramsChange] = []  # newest first
        start, complete = "tip", False
        for _ in range(self.max_pages):
            url = client.url(repo_path, "json-log", start, HISTOGRAMS_JSON_PATH) + f"?revcount={self.page_size}"
            response = client.get(url)
            if response.not_found:
                complete = True
                break
            page = parse_hgweb_filelog(response.body, url)
            fresh = [change for change in page if change.node not in seen and change.node not in known_nodes]
            seen.update(change.node for change in page)
            new_changes.extend(fresh)
            if not fresh or any(change.node in known_nodes for change in page):
                complete = True
                break
            start = page[-1].node
        if not complete:
            log.warning("the Histograms.json history of %s has more than %d pages of %d; older changes "
                        "are left out", repo_path, self.max_pages, self.page_size)
        old = known.changes if known else ()
        return HistogramsHistory(repo_path, old + tuple(reversed(new_changes)), self.cache.clock(),
                                 complete and (known.complete if known else True))

    def _freshest_copy(self, repo_path: str) -> HistogramsHistory | None:
        """The most recently read of the memory, disk and seed copies (remembered in memory)."""
        with self._lock:
            copies = [self._histories.get(repo_path)]
        for root in (self.cache.cache_dir, *self.cache.seed_dirs):
            copies.append(self._read_history(root, repo_path))
        available = [copy for copy in copies if copy is not None]
        if not available:
            return None
        freshest = max(available, key=lambda copy: copy.fetched_at)
        with self._lock:
            self._histories[repo_path] = freshest
        return freshest

    def _is_fresh(self, history: HistogramsHistory, now: float, needed_at: float | None) -> bool:
        age = now - history.fetched_at
        if age >= self.history_ttl:
            return False
        if needed_at is None or needed_at <= history.fetched_at or needed_at > now:
            return True  # a build from the future cannot be helped by reading the log again
        return age < self.min_refresh_interval

    def _recently_failed(self, repo_path: str, now: float) -> bool:
        with self._lock:
            failed_at = self._history_failed_at.get(repo_path)
        return failed_at is not None and now - failed_at < self.cache.negative_ttl

    def _read_history(self, root: Path, repo_path: str) -> HistogramsHistory | None:
        path = self._history_path(root, repo_path)
        body = read_bytes_if_exists(path)
        if body is None:
            return None
        try:
            return HistogramsHistory.from_json(body, repo_path, str(path))
        except InvalidHgwebResponse as error:
            self.cache.stats.add("corrupt_files")
            log.warning("ignoring cached history: %s", error)
            return None

    @staticmethod
    def _history_path(root: Path, repo_path: str) -> Path:
        return inside(root, root.joinpath(*repo_path.split("/"), HISTORY_FILE))

    # -- changeset dates

    def _read_changeset(self, revision: Revision) -> HistogramsChange | None:
        for root in (self.cache.cache_dir, *self.cache.seed_dirs):
            path = entry_directory(root, revision) / CHANGESET_FILE
            body = read_bytes_if_exists(path)
            if body is None:
                continue
            try:
                change = parse_hgweb_changeset(body, str(path))
            except InvalidHgwebResponse as error:
                self.cache.stats.add("corrupt_files")
                log.warning("ignoring cached changeset: %s", error)
                continue
            if change.node.startswith(revision.changeset):
                return change
        return None

    def _fetch_changeset(self, revision: Revision, use_network: bool) -> HistogramsChange:
        client = self.cache.client
        if client is None or not use_network:
            raise HgwebError(f"the date of {revision} is not cached and the server is not used")
        url = client.url(revision.repo_path, "json-rev", revision.changeset)
        self.cache.stats.add("changeset_lookups")
        response = client.get(url)
        if response.not_found:
            raise RevisionNotFoundError(revision, url)
        change = parse_hgweb_changeset(response.body, url)
        if not change.node.startswith(revision.changeset):
            raise InvalidHgwebResponse(f"{url} describes changeset {change.node}, not {revision.changeset}", url)
        stored = json.dumps({"node": change.node, "date": [change.date, 0]}).encode()
        self.cache.write_to_disk(entry_directory(self.cache.cache_dir, revision) / CHANGESET_FILE, stored)
        return change

    def close(self) -> None:
        """Close the cache's HTTP connections."""
        self.cache.close()
