"""The raw spool: node-unique framed files the edge appends to.

:mod:`.files` (writer, reader, file names), :mod:`.framing` (the record
format, ours and the original node.js ones) and the built-in plugin
``store.spool`` (:mod:`.writer_plugin`, ``telemetry_store_spool_writer``).
"""
