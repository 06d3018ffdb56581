"""Configuration: the YAML loader, the core keys, option declarations, logging setup.

:mod:`.loader` (read, expand, override, validate), :mod:`.keys` (every core
key with its default), :mod:`.options` (how a key is declared, also by
plugins through ``telemetry_config_schema``), :mod:`.logging_setup`.
"""
