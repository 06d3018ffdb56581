"""The dedup stage: the rules, backends (SQLite, Redis) and the ledger.

:mod:`.rules` decides (pure functions; also the built-in ``dedup.key``,
``telemetry_dedup_key``), :mod:`.deduplicator` is what the processor calls.
Built-in plugins: ``dedup.sqlite`` and ``dedup.redis``
(``telemetry_dedup_backend``), ``dedup.ledger`` (the ledger and the
``telemetry_reduce_record_filters`` that applies it) and ``dedup.check``
(``telemetry dedup check``).
"""
