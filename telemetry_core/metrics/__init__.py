"""Metrics: the scales hook-call monitor, exporters (JSON, Prometheus), Graphite.

:mod:`.stats` records every hook call (and per plugin) and exports;
built-in plugin ``metrics.graphite`` (:mod:`.graphite`) pushes to Graphite.
"""
