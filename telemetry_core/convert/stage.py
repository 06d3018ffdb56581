"""Built-in plugin: the convert stage.

* ``telemetry_convert_histogram_spec`` checks a payload's ``info.revision``
  against ``convert.histograms.repositories`` (``unknown_revision``, with
  no request made) and resolves it (or its channel and build id) to a
  :class:`~telemetry_core.convert.spec.HistogramSpec` through the revision
  cache and history (``convert.histograms`` config), keeping the last specs
  in memory (their bucket indexes are what makes conversion fast);
* ``telemetry_convert_payload`` converts each payload shape
  (:mod:`telemetry_core.convert.shapes`): classic (``ver`` 1) payloads --
  ``histograms`` and ``keyedHistograms`` with the spec, and
  ``addonHistograms`` generically from each entry's own description, after
  checking entries against the definitions plugins know
  (``telemetry_convert_addon_histograms``, e.g. the pdf.js plugin): a
  disagreement is a counted warning, never a change to the record; Firefox
  OS 1.3 (``ver`` 3) payloads (:mod:`.fxos`); and unified (``version`` 4)
  pings (:mod:`.unified`), whose ``payload`` sections convert like a
  classic payload's.

It also adds ``telemetry convert`` and ``telemetry histograms show``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from .buckets import DefinitionError, parse_definition
from .conversion import convert_addon_histograms, convert_histogram_sections, convert_payload
from .fxos import convert_fxos, is_fxos
from .unified import convert_unified, is_unified
from ..hookspecs import hookimpl
from .spec import HistogramSpec, addon_histogram_layout
from .allowlist import RepositoryAllowlist
from .commands import add_commands
from .history import SpecResolver
from .revisions import parse_revision, revision_cache_from_options

#: Warnings this plugin returns (counted under convert/warning_names/<name>).
ADDON_MISMATCH = "addon_definition_mismatch"
ADDON_UNKNOWN = "addon_definition_unknown"
SPEC_CACHE_SIZE = 32
#: Revision URLs remembered by :class:`SpecSource` (several URLs may name one changeset).
EXACT_URLS = 256
_EMPTY_SPEC = HistogramSpec({})


class SpecSource:
    """Allowlist + resolver + a small LRU of built :class:`HistogramSpec` objects, per engine."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.allowlist = RepositoryAllowlist(options["repositories"])
        self.resolver = SpecResolver(revision_cache_from_options(options),
                                     history_ttl=options["history_ttl"],
                                     revision_lookup=options["revision_lookup"])
        self.specs: OrderedDict[str, HistogramSpec] = OrderedDict()
        #: Revision URLs (as pings write them) that resolved to their own changeset: a
        #: changeset's Histograms.json never changes, so they skip parsing and resolving.
        self.exact: OrderedDict[str, HistogramSpec] = OrderedDict()

    def spec(self, revision: str | None, info: dict[str, Any]) -> HistogramSpec:
        if revision:
            spec = self.exact.get(revision)
            if spec is not None:
                return spec
            self.allowlist.check(revision, parse_revision(revision))
        resolved = self.resolver.resolve(revision, info)
        spec = self._built(resolved)
        if revision and resolved.how == "revision":
            self.exact[revision] = spec
            if len(self.exact) > EXACT_URLS:
                self.exact.popitem(last=False)
        return spec

    def _built(self, resolved: Any) -> HistogramSpec:
        key = str(resolved.revision)
        spec = self.specs.get(key)
        if spec is None:
            spec = self.specs[key] = HistogramSpec(resolved.histograms, revision=key)
            if len(self.specs) > SPEC_CACHE_SIZE:
                self.specs.popitem(last=False)
        else:
            self.specs.move_to_end(key)
        return spec


class ConvertStage:
    """The built-in ``convert.histograms`` plugin: one spec source (revision
    cache, resolver, spec LRU) per engine, built on first use."""

    def __init__(self) -> None:
        self.source: SpecSource | None = None

    @hookimpl(trylast=True)
    def telemetry_convert_histogram_spec(self, revision: str | None, info: dict[str, Any],
                                         engine: Any) -> HistogramSpec:
        if self.source is None:
            self.source = SpecSource(engine.config.get("convert.histograms"))
        return self.source.spec(revision, info)

    @hookimpl(trylast=True)
    def telemetry_convert_payload(self, record: Any, spec: HistogramSpec | None, engine: Any) -> list[str]:
        payload = record.payload
        spec = spec if spec is not None else _EMPTY_SPEC
        if is_unified(payload):
            return convert_unified(payload, lambda holder: convert_sections(holder, spec, engine))
        if is_fxos(payload):
            return convert_fxos(payload)
        warnings = addon_warnings(payload, engine)
        warnings += convert_payload(payload, spec)
        warnings += convert_addon_histograms(payload)
        return warnings

    @hookimpl
    def telemetry_register_commands(self, cli: Any) -> None:
        add_commands(cli)


def convert_sections(holder: dict[str, Any], spec: HistogramSpec, engine: Any) -> list[str]:
    """The histogram sections of a unified ping's ``payload``, converted as a classic payload's."""
    warnings = addon_warnings(holder, engine)
    warnings += convert_histogram_sections(holder, spec)
    warnings += convert_addon_histograms(holder)
    return warnings


def addon_warnings(payload: dict[str, Any], engine: Any) -> list[str]:
    """Compare add-on entries with the definitions plugins know; warnings only."""
    addons = payload.get("addonHistograms")
    if not isinstance(addons, dict):
        return []
    warnings = []
    for addon_id, entries in addons.items():
        if not isinstance(entries, dict):
            continue  # the generic conversion names this problem
        known = engine.addon_histograms(addon_id=addon_id)
        if not known:
            continue
        for name, entry in entries.items():
            definition = known.get(name)
            if definition is None:
                warnings.append(ADDON_UNKNOWN)
                continue
            try:
                expected = parse_definition(name, definition)
                actual = addon_histogram_layout(name, entry)
            except DefinitionError:
                continue  # a malformed entry is rejected by the generic conversion
            if (expected.histogram_type, expected.low, expected.high, expected.n_buckets) != \
                    (actual.histogram_type, actual.low, actual.high, actual.n_buckets):
                warnings.append(ADDON_MISMATCH)
    return warnings
