"""What one submitted record may cost the processor (``process.limits``).

A record is checked right after its JSON is decoded, before any stage
works on it, so a hostile record is quarantined instead of exhausting
memory, the stack or a serializer.  Each breached limit is a quarantine
category of its own (``invalid/<category>/``):

===================  =========================================================  ==================
category             what                                                       limit (default)
===================  =========================================================  ==================
``too_deep``         objects/arrays nested deeper than the limit                ``max_depth`` (64)
``key_too_long``     an object key (any, at any depth) longer than the limit    ``max_key_length``
                     in characters                                              (1024)
``too_many_         more histograms in ``histograms``, ``addonHistograms``     ``max_histograms``
histograms``         (all add-ons) or ``keyedHistograms`` (all keys) together   (10000)
``too_many_         an add-on histogram (which describes its own buckets)      ``max_buckets``
buckets``            claims more buckets (``bucket_count``) than the limit      (10000)
===================  =========================================================  ==================

The depth and key walk runs compiled when the converter's C extension is
built (about 20 µs for a 77 KB Firefox ping; the pure-Python walk costs as
much as decoding the JSON).  Histograms the spec defines take their bucket
count from Histograms.json, never from the ping, so only add-on histograms
can claim a bucket count; their layout is refused before anything is
allocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ...errors import RecordError

try:
    from ...convert._speedups import payload_shape as _compiled_shape
except ImportError:  # installed without a C compiler: the walk below does the same
    _compiled_shape = None

@dataclass(frozen=True)
class RecordLimits:
    """The ``process.limits`` section."""

    max_depth: int = 64
    max_key_length: int = 1024
    max_histograms: int = 10_000
    max_buckets: int = 10_000

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "RecordLimits":
        return cls(**{name: section[name] for name in cls.__dataclass_fields__ if name in section})


def check_payload(payload: dict[str, Any], limits: RecordLimits) -> None:
    """Raise a :class:`RecordError` naming the first limit ``payload`` breaks."""
    shape = (_compiled_shape(payload, limits.max_depth, limits.max_key_length) if _compiled_shape is not None
             else payload_shape(payload, limits.max_depth, limits.max_key_length))
    if shape is not None:
        problem, value = shape
        if problem == "too_deep":
            raise RecordError("too_deep", f"the payload nests more than {limits.max_depth} levels deep "
                                          f"(process.limits.max_depth)")
        raise RecordError("key_too_long", f"an object key has {value} characters, more than "
                                          f"{limits.max_key_length} (process.limits.max_key_length)")
    count = 0
    for source in _histogram_sources(payload):
        histograms = source.get("histograms")
        count += len(histograms) if isinstance(histograms, dict) else 0
        for group in ("addonHistograms", "keyedHistograms"):
            entries = source.get(group)
            if isinstance(entries, dict):
                count += sum(len(inner) for inner in entries.values() if isinstance(inner, dict))
    if count > limits.max_histograms:
        raise RecordError("too_many_histograms", f"the payload has {count} histograms, more than "
                                                 f"{limits.max_histograms} (process.limits.max_histograms)")
    for source in _histogram_sources(payload):
        addons = source.get("addonHistograms")
        if not isinstance(addons, dict):
            continue
        for addon_id, entries in addons.items():
            if not isinstance(entries, dict):
                continue
            for name, entry in entries.items():
                claimed = entry.get("bucket_count") if isinstance(entry, dict) else None
                if type(claimed) is int and claimed > limits.max_buckets:
                    raise RecordError("too_many_buckets", f"add-on histogram {addon_id!r:.60}/{name!r:.60} claims "
                                                          f"{claimed} buckets, more than {limits.max_buckets} "
                                                          f"(process.limits.max_buckets)")


def payload_shape(obj: Any, max_depth: int, max_key_length: int) -> tuple[str, int] | None:
    """The pure-Python twin of the compiled walk: ``("too_deep", depth)``,
    ``("key_too_long", length)`` or ``None``."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return ("too_deep", depth)
        if type(node) is dict:
            for key, item in node.items():
                if type(key) is str and len(key) > max_key_length:
                    return ("key_too_long", len(key))
                if type(item) is dict or type(item) is list:
                    stack.append((item, depth + 1))
        else:
            stack.extend((item, depth + 1) for item in node if type(item) is dict or type(item) is list)
    return None


def _histogram_sources(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Where histograms live: the payload itself (classic) and, for unified
    pings, its ``payload`` object."""
    inner = payload.get("payload")
    return [payload, inner] if isinstance(inner, dict) else [payload]
