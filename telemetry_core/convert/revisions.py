"""Histograms.json by revision: ``info.revision`` parsing and the revision cache.

A classic ping names the build's source as ``info.revision``, e.g.
``http://hg.mozilla.org/releases/mozilla-release/rev/a55c55edf302``.
:func:`parse_revision` turns that into a :class:`Revision` (repository path
and changeset), and :class:`RevisionCache` returns the ``Histograms.json`` of
that changeset, looking in this order:

1. an in-memory LRU (``memory_size`` revisions);
2. the disk cache ``<cache_dir>/<repo path>/<changeset[:12]>/Histograms.json``,
   shared by every process that uses the same ``cache_dir``;
3. read-only seed directories with the same layout (the package ships one,
   :data:`DEFAULT_SEED_DIR`, so the fixture revisions work offline);
4. ``<server>/<repo path>/raw-file/<changeset>/toolkit/components/telemetry/Histograms.json``
   over HTTP(S), with timeouts, retries with back-off on connection errors
   and 5xx answers, no retry on 404 (remembered for ``negative_ttl`` seconds,
   in memory and in one shared file, ``<cache_dir>/not-found.json``, at most
   ``negative_max_entries`` of them), and validation before anything is cached.

The host in a ping's revision URL is never contacted: fetches always go to
the configured ``server``.  Repository paths and changesets become directory
names, so both are checked (:class:`Revision`) and nothing is ever written
outside ``cache_dir``.  Writes are atomic (temporary file in the same
directory, fsync, :func:`os.replace`), so concurrent processes never see a
partial file.

The history of ``Histograms.json`` (which spec was in effect at a date, for
pings without a revision) is in :mod:`telemetry_core.convert.history`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping


from .. import __version__
from ..atomic_files import write_bytes_atomically
from ..errors import RecordError, TelemetryError

if TYPE_CHECKING:
    import requests

# requests and urllib3 (~0.05 s to import) are imported by _import_requests() on an
# HgwebClient's first GET, not with this module (every command loads it) nor when the
# client is made (most runs find every revision they need in the cache).
requests: Any = None  # noqa: F811 - the runtime binding of the name typed above
HTTPAdapter: Any = None
Retry: Any = None
ConnectTimeoutError: Any = None
MaxRetryError: Any = None
NewConnectionError: Any = None
ReadTimeoutError: Any = None


def _import_requests() -> None:
    """Bind requests and the urllib3 names this module uses (once)."""
    global requests, HTTPAdapter, Retry  # noqa: PLW0603
    global ConnectTimeoutError, MaxRetryError, NewConnectionError, ReadTimeoutError  # noqa: PLW0603
    if requests is not None:
        return
    import requests as requests_module
    import requests.adapters
    import urllib3.exceptions as errors
    import urllib3.util.retry

    HTTPAdapter, Retry = requests_module.adapters.HTTPAdapter, urllib3.util.retry.Retry
    ConnectTimeoutError, MaxRetryError = errors.ConnectTimeoutError, errors.MaxRetryError
    NewConnectionError, ReadTimeoutError = errors.NewConnectionError, errors.ReadTimeoutError
    requests = requests_module

log = logging.getLogger(__name__)

#: Path of the histogram definitions inside a Firefox source tree.
HISTOGRAMS_JSON_PATH = "toolkit/components/telemetry/Histograms.json"
#: The hgweb server the original project fetched from.
DEFAULT_SERVER = "https://hg.mozilla.org"
#: Seed cache shipped in the package (the three fixture revisions).
DEFAULT_SEED_DIR = Path(__file__).parent.parent / "data" / "histogram_cache"

#: File names inside one ``<repo path>/<changeset key>/`` cache directory.
HISTOGRAMS_FILE = "Histograms.json"
NOT_FOUND_FILE = "not-found.json"

#: Length of the cache key: hg's short changeset form.  A 12- and a
#: 40-digit form of the same changeset share one cache entry.
CHANGESET_KEY_LENGTH = 12
#: HTTP answers that mean "this revision does not exist on the server".
NOT_FOUND_STATUSES = frozenset({404, 410})
#: Server errors that are retried with back-off.
RETRIED_STATUSES = frozenset({500, 502, 503, 504})

_REVISION_URL = re.compile(
    r"(?i:https?)://(?P<host>[^/\s?#]+)/(?P<repo>[^\s?#]*?)/?rev/(?P<changeset>[^/\s?#]*)/?"
)
_REPO_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_CHANGESET = re.compile(r"[0-9a-f]{1,40}")
MAX_REPO_DEPTH = 6
MAX_REPO_COMPONENT_LENGTH = 64
MAX_REPO_PATH_LENGTH = 200


# --------------------------------------------------------------------------- errors


class HgwebError(TelemetryError):
    """The hgweb server could not be reached, or answered something unusable.

    Operational, not about one record: nothing was cached, and the same
    request may succeed later (server back, network fixed).  ``url`` is the
    request that failed (``None`` when offline).
    """

    def __init__(self, message: str, url: str | None = None) -> None:
        self.url = url
        super().__init__(" ".join(message.split()))


class InvalidHgwebResponse(HgwebError):
    """The server answered 200, but the body is not what was asked for
    (not JSON, not a Histograms.json, not an hgweb JSON log).  Not cached."""


class RevisionNotFoundError(RecordError):
    """The server says the revision (or its Histograms.json) does not exist.

    A record-level failure (category ``conversion_error``, as in the original
    converter): the answer is remembered for ``negative_ttl`` seconds.
    """

    def __init__(self, revision: Revision, url: str) -> None:
        self.revision = revision
        self.url = url
        super().__init__(
            "conversion_error",
            f"{url} was not found (HTTP 404); the revision {revision} is unknown to the server "
            "or has no Histograms.json",
        )


# --------------------------------------------------------------------------- revision URLs


@dataclass(frozen=True)
class Revision:
    """A changeset of a repository on the hgweb server.

    ``repo_path`` is everything between the host and ``/rev/`` in a revision
    URL (``mozilla-central``, ``releases/mozilla-aurora``, ``projects/cedar``,
    ``try`` ...); ``changeset`` is the lower-case hex id (1 to 40 digits).
    Both are checked on construction so that they are safe as directory
    names: a :class:`~telemetry_core.errors.RecordError` (``missing_revision``)
    is raised otherwise.
    """

    repo_path: str
    changeset: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "changeset", str(self.changeset).lower())
        check_repo_path(self.repo_path)
        check_changeset(self.changeset)

    @property
    def cache_key(self) -> str:
        """The changeset's directory name in the cache (hg's 12-digit short form)."""
        return self.changeset[:CHANGESET_KEY_LENGTH]

    def url(self, server: str = DEFAULT_SERVER) -> str:
        """The revision's hgweb URL on ``server``."""
        return f"{server.rstrip('/')}/{self.repo_path}/rev/{self.changeset}"

    def __str__(self) -> str:
        return f"{self.repo_path}/rev/{self.changeset}"


def check_repo_path(repo_path: str) -> None:
    """Raise ``RecordError("missing_revision")`` unless ``repo_path`` is a safe
    relative path: 1 to 6 components of letters, digits and ``._+-`` that do
    not start with a dot or dash (so no ``..``, no absolute path, no NUL or
    backslash), each at most 64 characters, 200 in all."""
    problem = _repo_path_problem(repo_path)
    if problem:
        raise RecordError("missing_revision", f"unusable repository path {repo_path!r:.120}: {problem}")


def _repo_path_problem(repo_path: object) -> str | None:
    if not isinstance(repo_path, str) or not repo_path:
        return "it is empty"
    if len(repo_path) > MAX_REPO_PATH_LENGTH:
        return f"longer than {MAX_REPO_PATH_LENGTH} characters"
    components = repo_path.split("/")
    if len(components) > MAX_REPO_DEPTH:
        return f"more than {MAX_REPO_DEPTH} components"
    for component in components:
        if len(component) > MAX_REPO_COMPONENT_LENGTH:
            return f"a component is longer than {MAX_REPO_COMPONENT_LENGTH} characters"
        if not _REPO_COMPONENT.fullmatch(component):
            return f"component {component!r:.80} is not letters, digits and ._+- (not starting with . or -)"
    return None


def check_changeset(changeset: str) -> None:
    """Raise ``RecordError("missing_revision")`` unless ``changeset`` is 1 to 40
    lower-case hex digits."""
    if not isinstance(changeset, str) or not _CHANGESET.fullmatch(changeset):
        raise RecordError("missing_revision", f"changeset {changeset!r:.60} is not 1 to 40 hex digits")


def parse_revision(url: object) -> Revision:
    """Parse a ping's ``info.revision``.

    :param url: ``http(s)://<host>/<repo path>/rev/<hex>`` with an optional
        trailing slash; the repo path is everything between host and ``/rev/``.
    :return: the :class:`Revision` (the host is dropped: fetches go to the
        configured server).
    :raises RecordError: ``missing_revision_repo`` for ``"/rev/"`` and other
        URLs without a repository; ``missing_revision`` for anything else that
        is not such a URL, or whose repo path or changeset is unsafe.
    """
    if not isinstance(url, str) or not url:
        raise RecordError("missing_revision", f"info.revision is {url!r:.60}, not a revision URL")
    match = _REVISION_URL.fullmatch(url)
    if match is None:
        if url.startswith("/rev/"):
            raise RecordError("missing_revision_repo", f"info.revision {url!r:.120} names no repository")
        raise RecordError(
            "missing_revision",
            f"info.revision {url!r:.120} is not an http(s)://<host>/<repo>/rev/<hex> URL",
        )
    if not match["repo"]:
        raise RecordError("missing_revision_repo", f"info.revision {url!r:.120} names no repository")
    if not match["changeset"]:
        raise RecordError("missing_revision", f"info.revision {url!r:.120} names no changeset")
    return Revision(match["repo"], match["changeset"])


def as_revision(revision: Revision | str) -> Revision:
    """``revision`` itself, or :func:`parse_revision` of a URL string."""
    return revision if isinstance(revision, Revision) else parse_revision(revision)


# --------------------------------------------------------------------------- validation


def parse_histograms_json(body: bytes, source: str) -> dict[str, dict[str, Any]]:
    """Decode and check a Histograms.json body.

    :return: the definitions: a non-empty JSON object whose values are
        objects, each with a string ``"kind"``.
    :raises InvalidHgwebResponse: with a one-line reason otherwise.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidHgwebResponse(
            f"{source} is not valid JSON ({error}); not cached, check the server and revision", source
        ) from error
    problem = histograms_json_problem(data)
    if problem:
        raise InvalidHgwebResponse(f"{source} is not a Histograms.json: {problem}; not cached", source)
    return data


def histograms_json_problem(data: object) -> str | None:
    """What makes ``data`` not a Histograms.json, or ``None`` when it is one."""
    if not isinstance(data, dict):
        return f"the top level is a JSON {type(data).__name__}, not an object"
    if not data:
        return "it defines no histograms"
    for name, definition in data.items():
        if not isinstance(definition, dict):
            return f"histogram {name!r:.80} is a {type(definition).__name__}, not an object"
        if not isinstance(definition.get("kind"), str):
            return f"histogram {name!r:.80} has no string \"kind\""
    return None


# --------------------------------------------------------------------------- files


def read_bytes_if_exists(path: Path) -> bytes | None:
    """The content of ``path``, or ``None`` when it does not exist."""
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def entry_directory(root: Path, revision: Revision) -> Path:
    """``<root>/<repo path>/<changeset key>``, checked to lie inside ``root``."""
    directory = root.joinpath(*revision.repo_path.split("/"), revision.cache_key)
    return inside(root, directory)


def inside(root: Path, path: Path) -> Path:
    """``path`` when its normalised form is inside ``root``; raises otherwise.

    :class:`Revision` already rejects unsafe paths; this is the second lock.
    """
    root_text = os.path.normpath(os.path.abspath(root))
    path_text = os.path.normpath(os.path.abspath(path))
    if os.path.commonpath([root_text, path_text]) != root_text or path_text == root_text:
        raise RecordError("missing_revision", f"cache path {path_text!r:.200} would leave {root_text!r}")
    return path


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class HgwebResponse:
    """A finished GET: ``status`` is 200 (``body`` complete) or a not-found status."""

    url: str
    status: int
    body: bytes

    @property
    def not_found(self) -> bool:
        return self.status in NOT_FOUND_STATUSES


class HgwebClient:
    """GETs from an hgweb server with timeouts, retries and a size limit.

    Connection errors, read timeouts and 500/502/503/504 answers are retried
    ``retries`` times with exponential back-off (``backoff`` × 2^(n-1)
    seconds after the n-th consecutive failure; the first retry is
    immediate, as urllib3 does it); ``Retry-After`` is ignored so that a
    server cannot stall the pipeline.  404/410 are returned at once.
    """

    def __init__(self, server: str, *, connect_timeout: float, read_timeout: float, retries: int,
                 backoff: float, max_bytes: int) -> None:
        self.server = server.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.retries = retries
        self.backoff = backoff
        self.max_bytes = max_bytes
        self._session: requests.Session | None = None
        self._session_pid = 0
        self._session_lock = threading.Lock()

    def url(self, repo_path: str, command: str, *parts: str) -> str:
        """``<server>/<repo path>/<command>/<parts...>``."""
        return "/".join((self.server, repo_path, command, *parts))

    def get(self, url: str) -> HgwebResponse:
        """GET ``url``.

        :return: the response when it is 200 (complete body) or 404/410.
        :raises HgwebError: connection refused, timeouts, server errors after
            the retries, any other status, a truncated or oversized body.
        """
        _import_requests()  # on the first GET: most runs find every revision in the cache
        session = self._session_for_this_process()
        try:
            with session.get(url, timeout=self.timeout, stream=True) as response:
                if response.status_code in NOT_FOUND_STATUSES:
                    return HgwebResponse(url, response.status_code, b"")
                if response.status_code != 200:
                    raise HgwebError(self._status_message(url, response.status_code), url)
                return HgwebResponse(url, 200, self._read_body(response, url))
        except requests.RequestException as error:
            raise HgwebError(f"GET {url} failed: {self._describe(error)}", url) from error

    def close(self) -> None:
        """Close pooled connections."""
        with self._session_lock:
            if self._session is not None:
                self._session.close()
                self._session = None

    def _describe(self, error: requests.RequestException) -> str:
        """One line: what went wrong with a request and what to do."""
        reason = error.args[0] if error.args else None
        if isinstance(reason, MaxRetryError):
            reason = reason.reason
        if isinstance(reason, NewConnectionError):  # (a subclass of ConnectTimeoutError in urllib3 2)
            return (f"could not connect after {self.retries} retries ({_short(reason)}); "
                    "check convert.histograms.server and the network")
        if isinstance(error, requests.Timeout) or isinstance(reason, (ReadTimeoutError, ConnectTimeoutError)):
            return (f"timed out (connect {self.timeout[0]} s, read {self.timeout[1]} s, {self.retries} retries); "
                    "check the server or raise the timeouts")
        if isinstance(error, requests.exceptions.ChunkedEncodingError):
            return (f"the connection broke before the whole body arrived ({_short(error)}); "
                    "nothing cached, try again later")
        return (f"{type(error).__name__} after {self.retries} retries: {_short(error)}; "
                "check convert.histograms.server and the network")

    def _status_message(self, url: str, status: int) -> str:
        retried = f" after {self.retries} retries" if status in RETRIED_STATUSES else ""
        return f"GET {url} answered HTTP {status}{retried}; nothing cached, try again later or check the server"

    def _read_body(self, response: requests.Response, url: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_content(chunk_size=1 << 16):
            size += len(chunk)
            if size > self.max_bytes:
                raise HgwebError(f"GET {url} sent more than {self.max_bytes} bytes; not a Histograms.json", url)
            chunks.append(chunk)
        return b"".join(chunks)

    def _session_for_this_process(self) -> requests.Session:
        # A Session's pooled sockets must not be shared with a forked child.
        with self._session_lock:
            if self._session is None or self._session_pid != os.getpid():
                self._session = self._new_session()
                self._session_pid = os.getpid()
            return self._session

    def _new_session(self) -> requests.Session:
        retry = Retry(
            total=self.retries, connect=self.retries, read=self.retries, status=self.retries, other=0,
            redirect=3, allowed_methods=frozenset({"GET"}), status_forcelist=RETRIED_STATUSES,
            backoff_factor=self.backoff, raise_on_status=False, respect_retry_after_header=False,
        )
        session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = f"telemetry-core/{__version__} (Histograms.json revision cache)"
        return session


def _short(error: BaseException) -> str:
    return " ".join(str(error).split())[:240]


# --------------------------------------------------------------------------- the cache


@dataclass
class RevisionCacheStats:
    """Counters the engine reads (and turns into metrics).

    ``memory_hits``/``disk_hits``/``seed_hits``: answers from each layer;
    ``negative_hits``: requests answered "not found" from the negative cache;
    ``fetches``: Histograms.json GETs; ``fetch_failures``: GETs that raised
    :class:`HgwebError` (including ``invalid_responses``, bodies that failed
    validation); ``not_found``: 404/410 answers; ``history_fetches``/
    ``history_failures``: hgweb log downloads; ``changeset_lookups``:
    ``json-rev`` requests; ``corrupt_files``: cache files that failed
    validation when read (ignored, and replaced on the next fetch);
    ``disk_write_failures``: cache files that could not be written.
    """

    memory_hits: int = 0
    disk_hits: int = 0
    seed_hits: int = 0
    negative_hits: int = 0
    fetches: int = 0
    fetch_failures: int = 0
    invalid_responses: int = 0
    not_found: int = 0
    history_fetches: int = 0
    history_failures: int = 0
    changeset_lookups: int = 0
    corrupt_files: int = 0
    disk_write_failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, counter: str, amount: int = 1) -> None:
        """Increase ``counter`` (thread-safe)."""
        with self._lock:
            setattr(self, counter, getattr(self, counter) + amount)

    def as_dict(self) -> dict[str, int]:
        """Every counter by name."""
        return {item.name: getattr(self, item.name) for item in fields(self) if not item.name.startswith("_")}


class RevisionCache:
    """Histograms.json by revision: memory LRU → disk cache → seed dirs → hgweb.

    :param server: hgweb base URL (``https://hg.mozilla.org``); ``None``
        means offline: only the caches answer.
    :param cache_dir: the shared, writable disk cache (created on demand).
    :param seed_dirs: read-only caches with the same layout, searched after
        ``cache_dir`` (e.g. :data:`DEFAULT_SEED_DIR`).
    :param connect_timeout: / :param read_timeout: seconds, per attempt.
    :param retries: extra attempts on connection errors, read timeouts and 5xx.
    :param backoff: back-off factor in seconds between retries.
    :param negative_ttl: seconds a 404 is remembered (memory and
        ``<cache_dir>/not-found.json``).
    :param negative_max_entries: most 404s remembered; the oldest go first.
    :param memory_size: revisions kept in memory (0 disables the memory layer).
    :param max_bytes: largest accepted response body.
    :param clock: wall clock (seconds since the epoch); tests pass their own.

    Returned dicts are shared with the cache: treat them as read-only.
    Safe to use from several threads and, through ``cache_dir``, from
    several processes.
    """

    def __init__(self, server: str | None = DEFAULT_SERVER, cache_dir: str | os.PathLike[str] = "./histogram_cache",
                 seed_dirs: Iterable[str | os.PathLike[str]] = (), *, connect_timeout: float = 5.0,
                 read_timeout: float = 30.0, retries: int = 3, backoff: float = 0.5,
                 negative_ttl: float = 3600.0, negative_max_entries: int = 1024, memory_size: int = 64,
                 max_bytes: int = 32 << 20, clock: Callable[[], float] = time.time) -> None:
        _check_settings(connect_timeout=connect_timeout, read_timeout=read_timeout, retries=retries,
                        backoff=backoff, negative_ttl=negative_ttl, memory_size=memory_size, max_bytes=max_bytes)
        if type(negative_max_entries) is not int or negative_max_entries < 1:
            raise ValueError(f"RevisionCache negative_max_entries must be an integer >= 1, got {negative_max_entries!r}")
        self.negative_max_entries = negative_max_entries
        self.server = server.rstrip("/") if server else None
        self.cache_dir = Path(cache_dir)
        self.seed_dirs = tuple(Path(directory) for directory in seed_dirs)
        self.negative_ttl = negative_ttl
        self.memory_size = memory_size
        self.clock = clock
        self.stats = RevisionCacheStats()
        self.client = (HgwebClient(self.server, connect_timeout=connect_timeout, read_timeout=read_timeout,
                                   retries=retries, backoff=backoff, max_bytes=max_bytes)
                       if self.server else None)
        self._memory: OrderedDict[tuple[str, str], dict[str, dict[str, Any]]] = OrderedDict()
        self._not_found: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    # -- public API

    def histograms_json(self, revision: Revision | str) -> dict[str, dict[str, Any]]:
        """The Histograms.json definitions of ``revision`` (a :class:`Revision` or URL).

        :raises RecordError: the URL does not parse (``missing_revision``,
            ``missing_revision_repo``).
        :raises RevisionNotFoundError: the server answered 404 (now or within
            ``negative_ttl``).
        :raises HgwebError: not cached and the server could not deliver a
            valid file (or the cache is offline).
        """
        revision = as_revision(revision)
        cached = self.cached_histograms_json(revision)
        if cached is not None:
            return cached
        self._raise_if_known_missing(revision)
        return self._fetch(revision)

    def cached_histograms_json(self, revision: Revision | str) -> dict[str, dict[str, Any]] | None:
        """Like :meth:`histograms_json` from memory, disk and seeds only (no network);
        ``None`` when no layer has it."""
        revision = as_revision(revision)
        key = (revision.repo_path, revision.cache_key)
        with self._lock:
            data = self._memory.get(key)
            if data is not None:
                self._memory.move_to_end(key)
        if data is not None:
            self.stats.add("memory_hits")
            return data
        data = self._read_entry(self.cache_dir, revision)
        if data is not None:
            self.stats.add("disk_hits")
        else:
            data = self._read_seeds(revision)
            if data is None:
                return None
            self.stats.add("seed_hits")
        self._remember(key, data)
        return data

    def close(self) -> None:
        """Close the HTTP connections (the caches stay usable)."""
        if self.client is not None:
            self.client.close()

    # -- layers

    def _read_entry(self, root: Path, revision: Revision) -> dict[str, dict[str, Any]] | None:
        path = entry_directory(root, revision) / HISTOGRAMS_FILE
        body = read_bytes_if_exists(path)
        if body is None:
            return None
        try:
            return parse_histograms_json(body, str(path))
        except InvalidHgwebResponse as error:
            self.stats.add("corrupt_files")
            log.warning("ignoring cached file: %s", error)
            return None

    def _read_seeds(self, revision: Revision) -> dict[str, dict[str, Any]] | None:
        for seed in self.seed_dirs:
            data = self._read_entry(seed, revision)
            if data is not None:
                return data
        return None

    def _remember(self, key: tuple[str, str], data: dict[str, dict[str, Any]]) -> None:
        if self.memory_size == 0:
            return
        with self._lock:
            self._memory[key] = data
            self._memory.move_to_end(key)
            while len(self._memory) > self.memory_size:
                self._memory.popitem(last=False)

    # -- negative cache

    def _raise_if_known_missing(self, revision: Revision) -> None:
        if self._not_found_since(revision) is not None:
            self.stats.add("negative_hits")
            url = self.client.url(revision.repo_path, "raw-file", revision.changeset, HISTOGRAMS_JSON_PATH) \
                if self.client else str(revision)
            raise RevisionNotFoundError(revision, url)

    def _not_found_since(self, revision: Revision) -> float | None:
        key = (revision.repo_path, revision.cache_key)
        now = self.clock()
        with self._lock:
            since = self._not_found.get(key)
        if since is not None and now - since < self.negative_ttl:
            return since
        entry = self._read_not_found_file().get(_negative_key(revision))
        since = entry.get("at") if isinstance(entry, dict) else None
        if isinstance(since, (int, float)) and not isinstance(since, bool) and now - since < self.negative_ttl:
            self._remember_not_found(key, float(since))
            return float(since)
        return None

    def _remember_not_found(self, key: tuple[str, str], since: float) -> None:
        with self._lock:
            self._not_found[key] = since
            self._not_found.move_to_end(key)
            while len(self._not_found) > self.negative_max_entries:
                self._not_found.popitem(last=False)

    def _record_not_found(self, revision: Revision, url: str) -> None:
        now = self.clock()
        self._remember_not_found((revision.repo_path, revision.cache_key), now)
        self._update_not_found_file(lambda entries: entries.__setitem__(_negative_key(revision),
                                                                        {"url": url, "status": 404, "at": now}))

    def _forget_not_found(self, revision: Revision) -> None:
        with self._lock:
            self._not_found.pop((revision.repo_path, revision.cache_key), None)
        if _negative_key(revision) in self._read_not_found_file():
            self._update_not_found_file(lambda entries: entries.pop(_negative_key(revision), None))

    def _read_not_found_file(self) -> dict[str, Any]:
        body = read_bytes_if_exists(self.cache_dir / NOT_FOUND_FILE)
        if body is None:
            return {}
        try:
            entries = json.loads(body)["entries"]
        except (ValueError, KeyError, TypeError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def _update_not_found_file(self, change: Callable[[dict[str, Any]], Any]) -> None:
        """Read-modify-write ``not-found.json`` under a lock shared by every
        process of the cache: apply ``change``, drop entries older than
        ``negative_ttl``, keep the newest ``negative_max_entries``."""
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with open(self.cache_dir / f".{NOT_FOUND_FILE}.lock", "a") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                entries = self._read_not_found_file()
                change(entries)
                now = self.clock()
                fresh = sorted(((key, entry) for key, entry in entries.items()
                                if isinstance(entry, dict) and isinstance(entry.get("at"), (int, float))
                                and now - entry["at"] < self.negative_ttl), key=lambda item: item[1]["at"])
                kept = dict(fresh[-self.negative_max_entries:])
                body = json.dumps({"version": 1, "entries": kept}, sort_keys=True).encode()
                self.write_to_disk(self.cache_dir / NOT_FOUND_FILE, body)
        except OSError as error:
            self.stats.add("disk_write_failures")
            log.warning("could not update %s (%s); 404s are remembered in memory only",
                        self.cache_dir / NOT_FOUND_FILE, error)

    # -- network

    def _fetch(self, revision: Revision) -> dict[str, dict[str, Any]]:
        if self.client is None:
            raise HgwebError(
                f"Histograms.json for {revision} is not in the cache and the cache is offline "
                "(no server configured); add it to a seed directory or configure convert.histograms.server")
        url = self.client.url(revision.repo_path, "raw-file", revision.changeset, HISTOGRAMS_JSON_PATH)
        self.stats.add("fetches")
        try:
            response = self.client.get(url)
            if response.not_found:
                self.stats.add("not_found")
                self._record_not_found(revision, url)
                raise RevisionNotFoundError(revision, url)
            data = parse_histograms_json(response.body, url)
        except InvalidHgwebResponse:
            self.stats.add("invalid_responses")
            self.stats.add("fetch_failures")
            raise
        except HgwebError:
            self.stats.add("fetch_failures")
            raise
        self._store(revision, response.body)
        self._remember((revision.repo_path, revision.cache_key), data)
        return data

    def _store(self, revision: Revision, body: bytes) -> None:
        directory = entry_directory(self.cache_dir, revision)
        self._forget_not_found(revision)
        self.write_to_disk(directory / HISTOGRAMS_FILE, body)

    def write_to_disk(self, path: Path, body: bytes) -> bool:
        """Write a cache file atomically; when the disk refuses (read-only,
        full, permissions) log it, count ``disk_write_failures`` and go on
        without it: the answer is still good, only not shared."""
        try:
            write_bytes_atomically(path, body)
        except OSError as error:
            self.stats.add("disk_write_failures")
            log.warning("could not write %s (%s); continuing without the disk cache for it", path, error)
            return False
        return True


def _negative_key(revision: Revision) -> str:
    return f"{revision.repo_path}/{revision.cache_key}"


def _check_settings(**settings: float) -> None:
    """Refuse negative numbers and zero timeouts with a one-line ValueError."""
    for name, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"RevisionCache {name} must be a number >= 0, got {value!r}")
    for name in ("connect_timeout", "read_timeout", "max_bytes"):
        if settings[name] == 0:
            raise ValueError(f"RevisionCache {name} must be > 0, got 0")
    for name in ("retries", "memory_size", "max_bytes"):
        if not isinstance(settings[name], int):
            raise ValueError(f"RevisionCache {name} must be an integer, got {settings[name]!r}")


def revision_cache_from_options(options: Mapping[str, Any]) -> RevisionCache:
    """Build a :class:`RevisionCache` from a ``convert.histograms`` config section.

    Known keys: ``server`` (null = offline), ``cache_dir``, ``seed_dirs``
    (default: the packaged seed), ``connect_timeout``, ``read_timeout``,
    ``retries``, ``backoff``, ``negative_ttl``, ``negative_max_entries``, ``memory_size``; others are
    ignored (they belong to :mod:`telemetry_core.convert.history`).
    """
    tunables = ("connect_timeout", "read_timeout", "retries", "backoff", "negative_ttl", "negative_max_entries",
                "memory_size")
    seeds = options.get("seed_dirs")
    return RevisionCache(
        options.get("server", DEFAULT_SERVER),
        options.get("cache_dir", "./histogram_cache"),
        seeds if seeds is not None else (DEFAULT_SEED_DIR,),
        **{name: options[name] for name in tunables if options.get(name) is not None},
    )
