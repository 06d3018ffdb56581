"""telemetry-core: receive, store, convert, de-duplicate, compress, publish and
reduce browser telemetry, every stage a family of pluggy hooks.

Plugin authors need only::

    from telemetry_core import hookimpl
"""

from .hookspecs import PROJECT_NAME, hookimpl, hookspec

__version__ = "0.1.0"
__all__ = ["PROJECT_NAME", "__version__", "hookimpl", "hookspec"]
