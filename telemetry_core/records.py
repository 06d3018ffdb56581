"""The values that travel between pipeline stages and through the hooks.

* :class:`Submission` is what the HTTP edge holds for one request (or one
  record of a batch) between parsing its path and appending it to the spool.
* :class:`Rejection` is a receive plugin's "no": an HTTP status and a reason
  name that is counted in metrics.
* :class:`Record` is what the processor holds for one spooled submission
  while it is decoded, converted, de-duplicated and stored.
* :class:`Decision` is what a dedup backend says about one record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass
class Submission:
    """One submission as the edge received it.

    ``body`` is kept exactly as received (gzip stays gzip); ``encoding`` is
    the request's ``Content-Encoding`` (``"identity"`` or ``"gzip"``).
    ``dims`` holds the dimensions parsed from the path (``reason``,
    ``appName``, ``appVersion``, ``appUpdateChannel``, ``appBuildID``), or is
    empty for the id-only path form.  Receive plugins may set
    ``client_addr`` and add string entries to ``extra``.
    """

    id: str
    path: str
    body: bytes
    received_at_ms: int
    dims: dict[str, str] = field(default_factory=dict)
    encoding: str = "identity"
    headers: Mapping[str, str] = field(default_factory=dict)
    peer: str | None = None
    client_addr: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SubmissionPath:
    """A submission path parsed by ``telemetry_receive_parse_path``."""

    id: str
    dims: dict[str, str]


@dataclass(frozen=True)
class Rejection:
    """Why a submission was refused: ``status`` is the HTTP status code to
    answer, ``reason`` a lower_snake_case name counted in metrics, and
    ``detail`` a one-line explanation sent to the client."""

    status: int
    reason: str
    detail: str = ""


@dataclass
class Record:
    """One spooled submission inside the processor.

    ``raw`` is the body as it was spooled; ``payload`` is the decoded JSON
    object once decoding succeeded (convert hooks change it in place);
    ``dims`` are the dimension values after the schema was applied (values
    outside a dimension's allowed list are ``"OTHER"``), keyed by dimension
    name in the schema's order; ``source`` names the spool file and offset
    the record came from, for manifests and errors.  After conversion the
    processor serializes the payload once into ``stored_json`` (the bytes
    stored after ``<id>\t``) and sets ``body_hash`` to their digest.
    """

    id: str
    path: str
    raw: bytes
    received_at_ms: int
    dims: dict[str, str] = field(default_factory=dict)
    payload: dict[str, Any] | None = None
    client_addr: str | None = None
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    stored_json: bytes | None = None
    body_hash: str = ""


@dataclass(frozen=True)
class DedupKey:
    """What a record is de-duplicated on: the session it belongs to, its kind
    (``"idle-daily"``, ``"saved-session"``; anything else is never
    de-duplicated) and a hash of its body (exact resubmissions)."""

    session: str
    kind: str
    body_hash: str


@dataclass(frozen=True)
class Decision:
    """A dedup backend's verdict for one record.

    ``outcome`` is one of ``"kept"``, ``"superseded_earlier"`` (this record
    replaces an earlier live one, named in ``supersedes``), ``"duplicate"``
    (an exact resubmission), ``"stale"`` (superseded on arrival: an older
    idle-daily than the live one, or an idle-daily after a saved-session) or
    ``"not_applicable"`` (the record's kind is not de-duplicated).

    The other fields carry what the dedup ledger records (docs/dedup.md):
    ``body_hash`` and ``received_at_ms`` of the decided record; ``version``,
    the backend's per-session version of the decision; ``changes``, every
    stored record whose state this decision changed, as ``(record id, body
    hash, "superseded" | "live")``; ``replayed`` is true when the same
    submission (same id, body hash, receive time and copy id) was decided
    before and this is that earlier decision, returned unchanged.
    """

    outcome: str
    record_id: str
    supersedes: tuple[str, ...] = ()
    body_hash: str = ""
    received_at_ms: int = 0
    version: int = 0
    changes: tuple[tuple[str, str, str], ...] = ()
    replayed: bool = False
