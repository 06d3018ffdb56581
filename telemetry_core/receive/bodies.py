"""Built-in plugin: refuse bodies the processor could never use, before they are spooled.

``telemetry_receive_validate`` rejects

* an empty body: 400 ``empty_body``;
* a gzip body (``Content-Encoding: gzip``) that is not complete, valid gzip:
  400 ``corrupt_gzip``;
* a gzip body that inflates past ``receive.max_inflated_bytes``: 413
  ``inflated_too_large``.

Gzip is inflated only to check it, a chunk at a time, and the output is
thrown away (:mod:`telemetry_core.compress.bounded_gzip`): the spool keeps the body
exactly as received.  The JSON inside is not parsed here; that is the
processor's job (raw first).

The limit is read in ``telemetry_configure``; like every module plugin it
serves the engine configured last in the process (the edge runs one engine
per worker process).
"""

from __future__ import annotations

from typing import Any

from ..compress import bounded_gzip
from ..hookspecs import hookimpl
from ..records import Rejection, Submission

__all__ = ["DEFAULT_MAX_INFLATED_BYTES", "body_problem", "telemetry_configure", "telemetry_receive_validate"]

DEFAULT_MAX_INFLATED_BYTES = 8 * 1024 * 1024
_settings = {"max_inflated_bytes": DEFAULT_MAX_INFLATED_BYTES}


def body_problem(body: bytes, encoding: str, max_inflated_bytes: int) -> Rejection | None:
    """Why ``body`` (sent with Content-Encoding ``encoding``) cannot be accepted, or ``None``."""
    if not body:
        return Rejection(400, "empty_body", "the request has no body; send the ping as the body")
    if encoding == "gzip":
        try:
            bounded_gzip.check(body, max_inflated_bytes)
        except bounded_gzip.GzipError as error:
            return Rejection(413 if error.reason == "inflated_too_large" else 400, error.reason, str(error))
    return None


@hookimpl
def telemetry_configure(config: Any) -> None:
    _settings["max_inflated_bytes"] = config.get("receive.max_inflated_bytes", DEFAULT_MAX_INFLATED_BYTES)


@hookimpl
def telemetry_receive_validate(submission: Submission) -> Rejection | None:
    return body_problem(submission.body, submission.encoding, _settings["max_inflated_bytes"])
