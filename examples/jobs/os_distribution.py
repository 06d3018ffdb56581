"""Distribution of operating systems: records per ``info.OS`` and channel.

Output: ``<channel>/<OS>\t<records>`` (``UNKNOWN`` when a record has no ``info.OS``).
"""

import json


def map(key, dims, value, context):
    reason, app_name, channel, version, build_id, submission_date = dims
    info = json.loads(value).get("info") or {}
    context.write(f"{channel}/{info.get('OS') or 'UNKNOWN'}", 1)


def combine(key, values, context):
    context.write(key, sum(values))


def reduce(key, values, context):
    context.write(key, sum(values))
