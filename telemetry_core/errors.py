"""Exceptions shared by the engine, the pipeline stages and plugins.

Every error a user can hit carries a one-line message that says what was
wrong and what to do.  Record-level failures carry a *category*: a short,
stable name that is counted in metrics and used as the ``invalid/``
partition a rejected record is written to.
"""

from __future__ import annotations


class TelemetryError(Exception):
    """Base class of every error raised on purpose by telemetry-core."""


class ConfigError(TelemetryError):
    """The configuration is invalid.

    ``source`` is the file (or ``--set``) the bad value came from, ``key``
    the dotted key path, and ``expected`` what would have been accepted.
    """

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None,
                 expected: str | None = None) -> None:
        self.source = source
        self.key = key
        self.expected = expected
        where = ": ".join(part for part in (source, key) if part)
        text = f"{where}: {message}" if where else message
        if expected:
            text += f" (expected {expected})"
        super().__init__(text)


class PluginLoadError(TelemetryError):
    """A plugin failed to import, to register, or to validate against the hook specs."""

    def __init__(self, name: str, distribution: str | None, cause: BaseException | str) -> None:
        self.name = name
        self.distribution = distribution
        self.cause = cause
        origin = f" (distribution {distribution})" if distribution else ""
        reason = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"plugin {name!r}{origin} failed to load: {reason}")


class RecordError(TelemetryError):
    """A submission could not be processed; it goes to ``invalid/<category>/``.

    ``category`` is one of :data:`RECORD_ERROR_CATEGORIES` (plugins may add
    their own, lower-case with underscores); ``detail`` says what exactly
    was wrong with this record.
    """

    def __init__(self, category: str, detail: str = "") -> None:
        if not category or not category.replace("_", "").isalnum() or not category.islower():
            raise ValueError(f"record error category must be lower_snake_case, got {category!r}")
        self.category = category
        self.detail = detail
        super().__init__(f"{category}: {detail}" if detail else category)


#: Categories used by the built-in stages, after the original telemetry-server's
#: bad-record types.  Each becomes a metric and an ``invalid/`` partition.
RECORD_ERROR_CATEGORIES: dict[str, str] = {
    "corrupted_data": "the body could not be decoded (bad gzip, bad UTF-8, bad JSON, torn record)",
    "empty_data": "the body was empty",
    "oversized_data": "the body inflated past the configured limit",
    "invalid_path": "the submission path does not have the expected segments",
    "uuid_only_path": "the path carried only a submission id, no dimensions",
    "invalid_control_char": "a path segment contains a control character",
    "missing_revision": "histograms present but no usable info.revision and no spec by build",
    "missing_revision_repo": "info.revision has no repository (\"/rev/\")",
    "bad_payload": "the payload does not follow the classic format (bad bucket, non-integer count, bad ver)",
    "conversion_error": "the histogram spec for the record could not be built or fetched",
    "write_failed": "the record could not be written to the store",
    "duplicate": "an exact resubmission (same id, same stored bytes) of a record already stored",
    "invalid_dedup_key": "the record's id or session cannot be de-duplicated (not a UUID)",
    "unknown_revision": "info.revision names a host or repository not in convert.histograms.repositories",
    "too_deep": "the payload nests objects/arrays deeper than process.limits.max_depth",
    "key_too_long": "an object key is longer than process.limits.max_key_length characters",
    "too_many_histograms": "the payload has more histograms than process.limits.max_histograms",
    "too_many_buckets": "an add-on histogram claims more buckets than process.limits.max_buckets",
    "processing_error": "a stage or plugin raised an unexpected exception on this record (type and message kept)",
}
