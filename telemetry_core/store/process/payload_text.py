"""Parse a body's JSON, keeping records whose text is damaged but readable.

The fast path is one ``orjson.loads`` of the bytes.  Only when it fails is
the text looked at again, because orjson refuses two kinds of damage that
telemetry-server (Python 2, ``unicode(data, errors="replace")`` then
``json.loads``) kept:

* **bytes that are not UTF-8** (a truncated multi-byte sequence, Latin-1
  text ...): decoded with each invalid sequence replaced by U+FFFD and
  parsed again; the record is kept with the warning
  :data:`INVALID_UTF8_REPLACED`.
* **lone surrogate escapes** (``"\\ud800"`` with no low surrogate after
  it, as JavaScript's ``JSON.stringify`` writes for a string cut in the
  middle of a pair since ES2019): valid JSON, but no Unicode text, so it
  could not be stored as UTF-8.  Each lone surrogate becomes U+FFFD; the
  record is kept with the warning :data:`LONE_SURROGATE_REPLACED`.

Anything still not parseable by orjson's strict rules (truncated JSON,
``NaN``, numbers out of range, nesting past the parser's limit) raises
``RecordError("corrupted_data", ...)`` with orjson's first message.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from ...errors import RecordError

#: Warning: the body had invalid UTF-8, replaced by U+FFFD.
INVALID_UTF8_REPLACED = "invalid_utf8_replaced"
#: Warning: the JSON held lone surrogate escapes, replaced by U+FFFD.
LONE_SURROGATE_REPLACED = "lone_surrogate_replaced"
#: Warning names :func:`loads_payload` returns.
WARNINGS: dict[str, str] = {
    INVALID_UTF8_REPLACED: "the body was not valid UTF-8; invalid bytes were replaced by U+FFFD and the record kept",
    LONE_SURROGATE_REPLACED: "the JSON held a \\uD800-\\uDFFF escape without its pair; it was replaced by U+FFFD "
                             "and the record kept",
}

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def loads_payload(body: bytes) -> tuple[Any, list[str]]:
    """``(document, warnings)`` for a JSON body; see the module docstring."""
    try:
        return orjson.loads(body), []
    except orjson.JSONDecodeError as exc:
        first_error = exc
    warnings: list[str] = []
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = body.decode("utf-8", errors="replace")
        warnings.append(INVALID_UTF8_REPLACED)
        try:
            return orjson.loads(text), warnings
        except orjson.JSONDecodeError:
            pass
    if _SURROGATE_ESCAPE.search(body) is not None:
        document = _without_lone_surrogates(text)
        if document is not None:
            return document, warnings + [LONE_SURROGATE_REPLACED]
    raise RecordError("corrupted_data", f"body is not valid JSON: {first_error}") from None


def _without_lone_surrogates(text: str) -> Any:
    """The document with each lone surrogate replaced, parsed by orjson's rules; ``None`` if it fails."""
    try:
        # The standard library pairs surrogate escapes and keeps lone ones as
        # code points; orjson then checks the result as strictly as the fast path.
        loose = json.loads(text)
        repaired = _SURROGATE.sub("\ufffd", json.dumps(loose, ensure_ascii=False))
        return orjson.loads(repaired)
    except (ValueError, RecursionError):
        return None
