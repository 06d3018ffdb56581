"""Which repositories a ping's ``info.revision`` may name (``convert.histograms.repositories``).

A revision URL is ``http(s)://<host>/<repo path>/rev/<changeset>``.  Before
anything is looked up or fetched, the host and repository path must match
one of the configured patterns, ``<host>/<repo path pattern>`` where each
``/``-separated segment is matched on its own (``*`` and ``?`` as in shell
globs, never crossing a ``/``).  The default names the trees the original
telemetry-server fetched from: ``hg.mozilla.org/mozilla-central``,
``hg.mozilla.org/releases/*``, ``hg.mozilla.org/projects/*`` and
``hg.mozilla.org/integration/*``.

Anything else is quarantined at once as ``unknown_revision``: no request
is made and no cache entry is written, so pings naming random repositories
cost neither the Histograms.json server nor the disk anything.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Iterable

from ..errors import RecordError
from .revisions import Revision

_HOST = re.compile(r"(?i:https?)://(?:[^@/\s?#]*@)?(?P<host>\[[^\]/]*\]|[^:/\s?#]+)")


class RepositoryAllowlist:
    """Host/repository patterns; :meth:`check` raises ``unknown_revision`` for the rest."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._compiled = []
        for pattern in self.patterns:
            host, _, path = pattern.partition("/")
            self._compiled.append((re.compile(fnmatch.translate(host.lower())),
                                   tuple(re.compile(fnmatch.translate(segment)) for segment in path.split("/"))))

    def allows(self, host: str, repo_path: str) -> bool:
        """Whether ``host`` (case-insensitive) and ``repo_path`` match a pattern."""
        segments = repo_path.split("/")
        host = host.lower()
        return any(host_pattern.match(host) and len(path_pattern) == len(segments)
                   and all(p.match(segment) for p, segment in zip(path_pattern, segments))
                   for host_pattern, path_pattern in self._compiled)

    def check(self, url: str, revision: Revision) -> None:
        """Raise ``RecordError("unknown_revision")`` unless ``url`` (whose parsed
        form is ``revision``) names an allowed host and repository."""
        match = _HOST.match(url)
        host = match["host"] if match else ""
        if not self.allows(host, revision.repo_path):
            raise RecordError("unknown_revision",
                              f"info.revision {url!r:.160} names {host or '?'}/{revision.repo_path}, which is not "
                              f"in convert.histograms.repositories; nothing was fetched")
