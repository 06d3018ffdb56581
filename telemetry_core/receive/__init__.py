"""The receive stage: the HTTP edge and its built-in receive plugins.

The edge (``app``, ``worker``, ``supervisor``, ``service``) takes
submissions at the Bagheera URLs, runs the receive hooks and appends each
accepted one to the raw spool before it answers.

Built-in plugins (registered name: module, hooks):

* ``receive.paths``: :mod:`.paths`, ``telemetry_receive_parse_path`` (essential);
* ``receive.bodies``: :mod:`.bodies`, ``telemetry_receive_validate``;
* ``receive.client_addr``: :mod:`.client_addr`, ``telemetry_receive_enrich``;
* ``receive.edge``: :mod:`.service`, ``telemetry_services`` (the edge in
  ``telemetry run``) and ``telemetry serve`` / ``telemetry bench``.
"""
