"""Built-in plugin: the Bagheera submission paths of Firefox telemetry.

``telemetry_receive_parse_path`` (``trylast``, so an installed plugin that
answers wins) accepts the two forms the original server did, given the
path after ``/submit/telemetry/``, already percent-decoded:

* ``<id>``: the mid-2013 client sent only the document id; accepted with no
  dimensions (the processor counts these as ``uuid_only_path``);
* ``<id>/<reason>/<appName>/<appVersion>/<appUpdateChannel>/<appBuildID>``.

``<id>`` is any 8-4-4-4-12 hexadecimal string (any UUID version, either
case).  Every segment must be non-empty, must not be ``.`` or ``..`` and may
not hold a control character (NUL, tab, newline ...), a ``/`` or a ``\\``.
Anything else is a :class:`~telemetry_core.records.Rejection` with status
400 and one of the reasons in :data:`REJECTION_REASONS`.

The module also offers :func:`parse_submission_path`, the same rules as a
plain function (the batch endpoints use it per record through the engine).
"""

from __future__ import annotations

import re

from ..hookspecs import hookimpl
from ..records import Rejection, SubmissionPath

__all__ = ["DIMENSIONS", "ID_PATTERN", "REJECTION_REASONS", "parse_submission_path",
           "telemetry_receive_parse_path"]

#: The dimensions of the long path form, in URL order.
DIMENSIONS: tuple[str, ...] = ("reason", "appName", "appVersion", "appUpdateChannel", "appBuildID")
#: A submission id: 8-4-4-4-12 hexadecimal digits, any version, either case.
ID_PATTERN = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
#: Reasons this plugin rejects a path with (all with status 400).
REJECTION_REASONS = ("empty_path", "wrong_segment_count", "empty_segment", "dot_segment",
                     "invalid_character", "invalid_id")
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f/\\]")


def parse_submission_path(path: str) -> SubmissionPath | Rejection:
    """Split ``path`` (after ``/submit/telemetry/``, decoded) into id and dimensions, or say why not."""
    if not path:
        return Rejection(400, "empty_path", "no submission id after /submit/telemetry/")
    segments = path.split("/")
    for position, segment in enumerate(segments, start=1):
        if not segment:
            return Rejection(400, "empty_segment", f"path segment {position} is empty")
        if segment in (".", ".."):
            return Rejection(400, "dot_segment", f"path segment {position} is {segment!r}")
        bad = _FORBIDDEN.search(segment)
        if bad:
            return Rejection(400, "invalid_character",
                             f"path segment {position} holds {bad.group()!r}; control characters, "
                             "'/' and '\\' are not allowed")
    if len(segments) not in (1, 1 + len(DIMENSIONS)):
        return Rejection(400, "wrong_segment_count",
                         f"path has {len(segments)} segments; send <id> or "
                         f"<id>/{'/'.join(DIMENSIONS)}")
    if not ID_PATTERN.fullmatch(segments[0]):
        return Rejection(400, "invalid_id", f"{segments[0][:64]!r} is not a submission id "
                                            "(8-4-4-4-12 hexadecimal digits)")
    return SubmissionPath(id=segments[0], dims=dict(zip(DIMENSIONS, segments[1:])))


@hookimpl(trylast=True)
def telemetry_receive_parse_path(path: str) -> SubmissionPath | Rejection:
    return parse_submission_path(path)
