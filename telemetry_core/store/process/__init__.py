"""The processor: finished spool files to published, compressed files.

:mod:`.processor` drives each file through decode (:mod:`.decoder`, with
:mod:`.limits`), the convert, dedup and store hooks (chunk by chunk, the
cyclic garbage collector paused by :mod:`.collector`), compression and
publishing, in crash-safe phases (:mod:`.state`, :mod:`.work_batch`,
:mod:`.manifests`); records waiting for a Histograms.json revision are
parked (:mod:`.pending`).  Built-in plugins: ``store.process``
(:mod:`.commands`: the service, ``telemetry process`` and ``telemetry
reconcile``, with :mod:`.holdings`) and ``store.replay`` (:mod:`.replay`).
"""
