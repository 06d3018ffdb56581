"""Built-in plugin: the histogram spec of each record's revision, for MapReduce jobs.

Stored (v2) histograms are arrays of bucket counts without their bucket
bounds; the bounds depend on the ``Histograms.json`` revision the record was
converted with (``info.revision``).  This plugin's
``telemetry_reduce_context`` gives ``map`` and ``reduce`` two lookups::

    bounds = context.histogram_bounds(payload)     # {name: (lower bound of bucket 0, ...)}
    spec = context.histogram_spec(payload)         # the HistogramSpec (or pass info, or a revision URL)

Nothing is looked up until a job calls one of them; each revision's spec
is then resolved once per task through ``telemetry_convert_histogram_spec``
(the revision cache the converter uses, offline for the seeded revisions)
and kept.  A revision that cannot be resolved raises, which counts as an
error of the record the job was mapping.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import TelemetryError
from ..hookspecs import hookimpl
from ..convert.spec import HistogramSpec, record_bounds


class HistogramLookup:
    """Spec lookups for one task, cached per revision (or per channel and build
    when a record has no revision)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._specs: dict[Any, HistogramSpec] = {}
        self.lookups = 0

    def spec(self, record: Mapping[str, Any] | str) -> HistogramSpec:
        """The spec of a payload (a dict with ``info``), an ``info`` dict, or a revision URL."""
        if isinstance(record, str):
            revision, info = record, {}
        else:
            info = record.get("info") if isinstance(record.get("info"), Mapping) else record
            revision = info.get("revision") if isinstance(info.get("revision"), str) else None
        key: Any = revision if revision is not None else (
            "build", info.get("appUpdateChannel"), info.get("appBuildID"), info.get("appVersion"))
        spec = self._specs.get(key)
        if spec is None:
            if self.engine is None:
                raise TelemetryError("histogram specs need an engine in the task; run the job with "
                                     "telemetry mapreduce")
            self.lookups += 1
            spec = self.engine.histogram_spec(revision=revision, info=dict(info))
            if spec is None:
                raise TelemetryError(f"no plugin gives a histogram spec for revision {revision!r}")
            self._specs[key] = spec
        return spec

    def bounds(self, payload: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        """Bucket lower bounds of every histogram of a stored payload that its revision
        describes (see :func:`telemetry_core.convert.spec.record_bounds`).

        Classic and flattened saved-session payloads keep their histograms at the
        top level; a converted unified ``main`` ping keeps them in ``payload``
        with the revision in ``payload.info``.  A keyed histogram's bounds are
        those of every one of its keys' arrays.
        """
        holder, info = _histograms_and_info(payload)
        arrays: dict[str, Any] = {}
        keyed = holder.get("keyedHistograms")
        if isinstance(keyed, Mapping):
            for name, by_key in keyed.items():
                if isinstance(by_key, Mapping):
                    first = next((array for array in by_key.values() if isinstance(array, list)), None)
                    if first is not None:
                        arrays[name] = first
        histograms = holder.get("histograms")
        if isinstance(histograms, Mapping):
            arrays.update(histograms)
        if not arrays:
            return {}
        return record_bounds({"histograms": arrays}, self.spec(info))


def _histograms_and_info(payload: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """Where a stored payload keeps its histograms, and the ``info`` that names their revision."""
    info = payload.get("info") if isinstance(payload.get("info"), Mapping) else {}
    inner = payload.get("payload")
    if ("ver" not in payload and isinstance(inner, Mapping) and isinstance(inner.get("info"), Mapping)
            and ("histograms" in inner or "keyedHistograms" in inner)):
        return inner, {**info, **inner["info"]}  # a converted unified ping that was not flattened
    return payload, info


@hookimpl
def telemetry_reduce_context(context: Any, job: Any) -> None:
    """Add ``histogram_spec`` and ``histogram_bounds`` (lazy; see the module docstring)."""
    lookup = HistogramLookup(context.engine)
    context.extras.setdefault("histogram_spec", lookup.spec)
    context.extras.setdefault("histogram_bounds", lookup.bounds)
