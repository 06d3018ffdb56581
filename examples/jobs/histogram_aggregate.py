"""Aggregate histograms across records, bucket by bucket, with each record's own buckets.

Stored histograms are arrays of bucket counts (then 5 statistics); which value
range each bucket covers depends on the Histograms.json revision the record was
converted with.  ``context.histogram_bounds(payload)`` gives, per histogram, the
lower bound of every bucket for *that record's* revision, so counts from
different revisions land on the right buckets.

Output: ``<histogram>[<lower bound>]\t<count>`` for every bucket that counted
something.  Set ``HISTOGRAMS`` to a set of names to aggregate only those.
"""

import json

HISTOGRAMS = None  # e.g. {"CYCLE_COLLECTOR", "GC_MS"}


def map(key, dims, value, context):
    payload = json.loads(value)
    histograms = payload.get("histograms") or {}
    for name, bounds in context.histogram_bounds(payload).items():
        if HISTOGRAMS is not None and name not in HISTOGRAMS:
            continue
        counts = histograms[name][: len(bounds)]
        for lower_bound, count in zip(bounds, counts):
            if count:
                context.write(f"{name}[{lower_bound}]", count)


def combine(key, values, context):
    context.write(key, sum(values))


def reduce(key, values, context):
    context.write(key, sum(values))
