"""The store stage: the raw spool, the processor, the partitioned layout, publishing.

* :mod:`.spool`: the raw spool the edge appends to;
* :mod:`.process`: the processor (spool files to published files), its
  commands (``process``, ``reconcile``, ``replay``) and crash-safe state;
* :mod:`.layout`, :mod:`.local`, :mod:`.s3`: where records and files go.

Built-in plugins: ``store.spool`` (``telemetry_store_spool_writer``,
essential), ``store.layout`` (``telemetry_store_partition``,
``telemetry_store_record``, ``telemetry_store_invalid``; essential),
``store.local`` and ``store.s3`` (``telemetry_store_publisher``),
``store.s3_policy`` (``telemetry policy``), ``store.process``
(``telemetry_services``: the processor in ``telemetry run``) and
``store.replay`` (``telemetry replay``).
"""
