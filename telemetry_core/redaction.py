"""Redaction: the one place that decides what of a value may be shown or stored.

Used wherever a config value, a URL or an error can reach a person or a
file: ``telemetry config show``, logs, ``telemetry doctor``, ``telemetry
reconcile``, the processor's ``work/*/state.json`` (``last_error``) and
metric labels.

* :func:`redact` hides the user-info of every URL in a text
  (``http://KEY:SECRET@host`` becomes ``http://***@host``) and the values of
  query parameters whose names look secret (``?token=...``); it takes a
  string, an exception or any object (shown with ``str``).
* :func:`redact_mapping` hides the values of keys whose names look secret
  (:func:`secret_name`: ``spark.hadoop.fs.s3a.secret.key``, ``password``,
  ``api_token`` ...) in a nested mapping, and redacts every other string.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

__all__ = ["REDACTED", "has_userinfo", "redact", "redact_mapping", "secret_name"]

REDACTED = "***"

#: ``scheme://user-info@`` (user-info: anything but ``/``, ``@`` and spaces up to the last ``@`` of the authority).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s@]*@)+")
_SECRET_WORDS = ("secret", "password", "passwd", "token", "credential", "private")
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&;][^=&#\s]*(?:secret|password|passwd|token|credential|signature|key)[^=&#\s]*=)[^&#\s]+",
    re.IGNORECASE)


def secret_name(name: str) -> bool:
    """Whether a key's name says its value is a secret (``secret``, ``password``, ``token``,
    ``credential`` anywhere, or a last component that is or ends with ``key``)."""
    lowered = str(name).lower()
    if any(word in lowered for word in _SECRET_WORDS):
        return True
    last = re.split(r"[._\-/:]", lowered)[-1] if lowered else ""
    return last.endswith("key")


def has_userinfo(text: str) -> bool:
    """Whether ``text`` holds a URL with user-info (credentials) in it."""
    return bool(_USERINFO.search(text))


def redact(value: Any) -> Any:
    """``value`` fit to show or store: strings and exceptions with URL user-info and secret
    query values replaced by ``***``; mappings and lists redacted item by item
    (:func:`redact_mapping`); ``None``, numbers and booleans unchanged."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return redact_mapping(value)
    if isinstance(value, (list, tuple)):
        return type(value)(redact(item) for item in value)
    text = value if isinstance(value, str) else str(value)
    if "://" in text:
        text = _USERINFO.sub(lambda match: f"{match['scheme']}{REDACTED}@", text)
    if "=" in text:
        text = _QUERY_SECRET.sub(lambda match: f"{match['name']}{REDACTED}", text)
    return text


def redact_mapping(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``mapping`` with the values of secret-looking keys replaced by ``***``
    (nested mappings too) and every other value passed through :func:`redact`."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if secret_name(key) and value is not None and not isinstance(value, Mapping):
            out[key] = REDACTED
        else:
            out[key] = redact(value)
    return out
