"""The core configuration keys, their types, defaults and documentation.

This is the one place the keys of ``plugins.yaml`` are declared (plugins add
their own ``plugins.<name>`` sections through ``telemetry_config_schema``).
``docs/configuration.md`` is checked against it by a test.
"""

from __future__ import annotations

from urllib.parse import urlparse

from .options import Option, Section

NODE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
#: Plugin names (built-in module names, entry-point names) as they may appear in YAML.
PLUGIN_NAME_PATTERN = r"[A-Za-z0-9_.:-]{1,200}"


def _http_url(value: str) -> str | None:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return f"{value!r} is not an http(s) URL"
    return None


def _redis_url(value: str) -> str | None:
    if urlparse(value).scheme not in ("redis", "rediss", "unix"):
        return "is not a redis://, rediss:// or unix:// URL"
    return None


CORE_SCHEMA = Section(
    help="telemetry-core configuration (plugins.yaml)",
    fields={
        "node_id": Option(
            "str", "auto", pattern=NODE_ID_PATTERN, auto=True,
            help="Name of this node in file names; 'auto' = host name + a short id kept in data_dir/node_id"),
        "data_dir": Option(
            "path", "./data",
            help="Root of spool/, the partitioned store, archive/, invalid/, failed/, metrics/ and state"),
        "schema": Option(
            "path", None, nullable=True, must_exist=True,
            help="Dimension schema (telemetry_schema.json); null = the copy shipped in the package"),
        "receive": Section(help="The HTTP edge", fields={
            "host": Option("str", "127.0.0.1", help="Address the edge listens on"),
            "port": Option("int", 8080, minimum=0, maximum=65535, help="Port the edge listens on (0 = any free port)"),
            "workers": Option("int", "auto", minimum=1, maximum=256, auto=True,
                              help="Edge worker processes sharing the port; 'auto' = number of cores"),
        }),
        "convert": Section(help="Histogram conversion", fields={
            "histograms": Section(help="Where Histograms.json revisions come from", fields={
                "server": Option("str", "https://hg.mozilla.org", check=_http_url,
                                 help="hgweb server that serves Histograms.json by revision"),
                "cache_dir": Option("path", "./histogram_cache",
                                    help="Disk cache of fetched Histograms.json revisions (shared by processes)"),
            }),
        }),
        "dedup": Section(help="Idle-daily / saved-session de-duplication", fields={
            "backend": Option("str", "sqlite", pattern=r"[a-z][a-z0-9_]*",
                              help="Dedup backend plugin: sqlite (embedded) or redis"),
            "redis_url": Option("str", None, nullable=True, secret=True, check=_redis_url,
                                help="Redis URL for the redis backend; use ${VAR} for credentials"),
        }),
        "compress": Section(help="Compression of finished store files", fields={
            "codec": Option("str", "xz", pattern=r"[a-z][a-z0-9_]*", help="Codec plugin: xz, gzip or zstd"),
            "level": Option("int", 0, minimum=0, maximum=22,
                            help="Codec level or preset (xz 0-9, gzip 1-9 with 0 = fastest, zstd 1-22)"),
        }),
        "store": Section(help="Stored and published data", fields={
            "publish": Section(help="Long-term storage of compressed files", fields={
                "backend": Option("str", "local", pattern=r"[a-z][a-z0-9_]*",
                                  help="Publisher plugin: local (data_dir/archive) or s3"),
                "bucket": Option("str", None, nullable=True, help="S3 bucket (backend s3)"),
                "prefix": Option("str", "", help="Key prefix inside the bucket (backend s3)"),
                "endpoint_url": Option("str", None, nullable=True, check=_http_url,
                                       help="S3 API endpoint; null = AWS"),
                "region": Option("str", None, nullable=True, help="S3 region; null = boto3's default"),
            }),
        }),
        "reduce": Section(help="MapReduce jobs", fields={
            "executor": Option("str", "local", pattern=r"[a-z][a-z0-9_]*",
                               help="Executor plugin: local (processes) or spark"),
        }),
        "metrics": Section(help="Metrics export", fields={
            "graphite": Section(
                help="Push metrics to Graphite (plaintext protocol); null = off",
                nullable=True, default_null=True, fields={
                    "host": Option("str", "127.0.0.1", help="Graphite (carbon) host"),
                    "port": Option("int", 2003, minimum=1, maximum=65535, help="Carbon plaintext port"),
                    "prefix": Option("str", "telemetry", pattern=r"[A-Za-z0-9_.-]+",
                                     help="Prefix of every metric path"),
                    "interval": Option("float", 60.0, minimum=0.1, help="Seconds between pushes"),
                }),
            "snapshot": Option("bool", True,
                               help="Write a metrics snapshot to data_dir/metrics/<command>.json on exit"),
        }),
        "logging": Section(
            help="logging.config.dictConfig mapping; empty = the default format on stderr",
            open=True, fields={
                "level": Option("str", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                                help="Level of the default handler (ignored when a dictConfig is given)"),
            }),
        "plugins": Section(help="Plugin selection; plus one section per plugin, named after it", fields={
            "disabled": Option("list", [], items="str",
                               help="Plugins (built-in module names or entry-point names) not to load"),
            "load": Option("list", [], items="str",
                           help="Extra plugin modules to load: importable names or paths to .py files"),
            "skip_broken": Option("bool", False,
                                  help="Skip (log and count) plugins that fail to load instead of stopping"),
        }),
    },
)
