"""Metrics: the scales hook-call monitor, exporters (JSON, Prometheus), Graphite."""
