"""Unified Telemetry pings (Firefox 38+) per ping type and update channel.

Reads only records converted from unified pings (``version`` 5, see
docs/convert.md): their ``info.reason`` is the ping's type (``main``,
``saved-session``, ``activation`` ...) and ``info.appUpdateChannel`` comes
from the ping's ``application``.  Classic pings are skipped.

Output: ``<type>/<channel>\t<records>`` (``UNKNOWN`` for a missing field).
"""

import json

UNIFIED_CONVERTED_VERSION = 5


def map(key, dims, value, context):
    payload = json.loads(value)
    if payload.get("version") != UNIFIED_CONVERTED_VERSION:
        return
    info = payload.get("info") or {}
    context.write(f"{info.get('reason') or 'UNKNOWN'}/{info.get('appUpdateChannel') or 'UNKNOWN'}", 1)


def combine(key, values, context):
    context.write(key, sum(values))


def reduce(key, values, context):
    context.write(key, sum(values))
