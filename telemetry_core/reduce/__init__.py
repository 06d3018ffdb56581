"""The reduce stage: MapReduce jobs, filters, inputs and executors.

:mod:`.job` (job scripts), :mod:`.filters` (dimension filters),
:mod:`.runner` and :mod:`.tasks` (running a job, one task).  Built-in
plugins: ``reduce.inputs`` (``telemetry_reduce_input``),
``reduce.histograms`` (``telemetry_reduce_context``), ``reduce.local`` and
``reduce.spark`` (``telemetry_reduce_executor``), ``reduce.command``
(``telemetry mapreduce``).
"""
