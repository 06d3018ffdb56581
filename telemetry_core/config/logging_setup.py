"""Logging from the ``logging:`` config section.

An empty section (or one with only ``level``) gives the default format
``<time> <level> [<node id>] <logger>: <message>`` on stderr.  A section with
``version: 1`` is handed to :func:`logging.config.dictConfig` unchanged.
Every log record carries ``node_id``, so dictConfig formats can use
``%(node_id)s`` too.  Library code only logs; it never prints.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import ConfigError
from ..redaction import redact

DEFAULT_FORMAT = "%(asctime)s %(levelname)s [%(node_id)s] %(name)s: %(message)s"
#: Libraries that log routine chatter at INFO (e.g. botocore's "Found credentials
#: in environment variables" on every command); the default setup keeps them at WARNING.
QUIET_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3")
_node_id = "-"
_base_factory = logging.getLogRecordFactory()


def _record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    record.node_id = _node_id
    return record


def set_node_id(node_id: str) -> None:
    """Stamp ``node_id`` on every log record from now on."""
    global _node_id
    _node_id = node_id
    logging.setLogRecordFactory(_record_factory)


class RedactingFormatter(logging.Formatter):
    """A formatter whose lines pass through :func:`telemetry_core.redaction.redact`
    (credentials in URLs, secret query values), tracebacks included.  The default
    setup uses it; a dictConfig section names it as
    ``{"()": "telemetry_core.config.logging_setup.RedactingFormatter", "format": ...}``."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(section: dict[str, Any], source: str = "config") -> None:
    """Apply the ``logging:`` section."""
    logging.setLogRecordFactory(_record_factory)
    if "version" in section:
        from logging.config import dictConfig

        try:
            dictConfig(section)
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            raise ConfigError(f"invalid dictConfig: {' '.join(str(exc).split())}", source=source,
                              key="logging") from None
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "telemetry_default", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter(DEFAULT_FORMAT))
    handler.telemetry_default = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(section.get("level", "INFO"))
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
