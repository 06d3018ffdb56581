"""The convert stage: bucket rules, Histograms.json revisions, the converter.

:mod:`.buckets` (bucket bounds), :mod:`.spec` (a revision's histograms),
:mod:`.revisions` and :mod:`.history` (which Histograms.json, cached),
:mod:`.allowlist` (which repositories may be named), :mod:`.conversion`
(classic payloads to v2 arrays; ``_speedups.c`` is its compiled fast path).

Built-in plugin ``convert.histograms`` (:mod:`.stage`):
``telemetry_convert_histogram_spec``, ``telemetry_convert_payload`` and the
commands ``telemetry convert`` / ``telemetry histograms`` (:mod:`.commands`).
"""
