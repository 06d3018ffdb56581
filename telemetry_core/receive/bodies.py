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

The plugin is an instance (:class:`BodyLimits`, registered as
``receive.bodies``): each engine has its own, configured in
``telemetry_configure``.
"""

from __future__ import annotations

from typing import Any

from ..compress import bounded_gzip
from ..hookspecs import hookimpl
from ..records import Rejection, Submission

__all__ = ["DEFAULT_MAX_INFLATED_BYTES", "BodyLimits", "body_problem"]

DEFAULT_MAX_INFLATED_BYTES = 8 * 1024 * 1024


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


class BodyLimits:
    """The built-in ``receive.bodies`` plugin: one per engine."""

    def __init__(self) -> None:
        self.max_inflated_bytes = DEFAULT_MAX_INFLATED_BYTES

    @hookimpl
    def telemetry_configure(self, config: Any) -> None:
        self.max_inflated_bytes = config.get("receive.max_inflated_bytes", DEFAULT_MAX_INFLATED_BYTES)

    @hookimpl
    def telemetry_receive_validate(self, submission: Submission) -> Rejection | None:
        return body_problem(submission.body, submission.encoding, self.max_inflated_bytes)
