"""The core configuration keys, their types, defaults and documentation.

This is the one place the keys of ``plugins.yaml`` are declared (plugins add
their own ``plugins.<name>`` sections through ``telemetry_config_schema``).
``docs/configuration.md`` is checked against it by a test.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlparse

from .options import Option, Section

NODE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"


def _http_url(value: str) -> str | None:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return f"{value!r} is not an http(s) URL"
    return None


def _ip_networks(value: list[str]) -> str | None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r} is not an IP address or CIDR network"
    return None


#: The trees telemetry-server fetched Histograms.json from (HISTOGRAMS.md §4).
DEFAULT_REPOSITORIES = (
    "hg.mozilla.org/mozilla-central",
    "hg.mozilla.org/releases/*",
    "hg.mozilla.org/projects/*",
    "hg.mozilla.org/integration/*",
)


def _repository_patterns(value: list[str]) -> str | None:
    for item in value:
        if "/" not in item or item.startswith("/") or item.endswith("/") or "//" in item or ".." in item:
            return f"{item!r} is not a host/repository-path pattern like 'hg.mozilla.org/releases/*'"
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
        "receive": Section(help="The HTTP edge (docs/receive.md)", fields={
            "host": Option("str", "127.0.0.1", help="Address the edge listens on"),
            "port": Option("int", 8080, minimum=0, maximum=65535, help="Port the edge listens on (0 = any free port)"),
            "workers": Option("int", "auto", minimum=1, maximum=256, auto=True,
                              help="Edge worker processes sharing the port; 'auto' = number of cores"),
            "backlog": Option("int", 1024, minimum=1, maximum=65535,
                              help="Listen backlog of each worker's socket (capped by net.core.somaxconn)"),
            "max_body_bytes": Option("int", 1024 * 1024, minimum=1, maximum=16 * 1024 * 1024,
                                     help="Largest request body accepted, as sent (gzip counts compressed); "
                                          "larger gets 413"),
            "max_inflated_bytes": Option("int", 8 * 1024 * 1024, minimum=1, maximum=16 * 1024 * 1024,
                                         help="Largest a gzip body may inflate to; more gets 413 (bounds gzip bombs)"),
            "max_path_bytes": Option("int", 10 * 1024, minimum=64, maximum=10 * 1024,
                                     help="Longest submission path (after /submit/telemetry/, decoded); "
                                          "longer gets 414"),
            "max_batch_records": Option("int", 1000, minimum=1, maximum=100_000,
                                        help="Most records in one batch request; more gets 413"),
            "max_in_flight": Option("int", 512, minimum=1,
                                    help="Requests with a complete body one worker handles at once; more get "
                                         "503 + Retry-After"),
            "max_slow_bodies": Option("int", 512, minimum=1,
                                      help="Requests one worker lets finish sending their body at once (bodies "
                                           "not complete on arrival); more get 503 + Retry-After"),
            "body_grace_s": Option("float", 0.5, minimum=0.0, maximum=60.0,
                                   help="Seconds a body that was not complete with its headers may take "
                                        "before it needs one of max_slow_bodies' slots"),
            "body_timeout_s": Option("float", 10.0, minimum=0.1,
                                     help="Seconds a client may take to send its body; slower gets 408"),
            "idle_timeout_s": Option("float", 75.0, minimum=0.1,
                                     help="Seconds before an idle keep-alive connection, or one that never "
                                          "finishes its headers, is closed"),
            "drain_timeout_s": Option("float", 20.0, minimum=0.0,
                                      help="On SIGTERM, seconds a worker waits for in-flight requests before "
                                           "it closes their connections"),
            "retry_after_s": Option("int", 30, minimum=1,
                                    help="Retry-After seconds sent with every 503 (overload, full disk, spool failure)"),
            "min_free_disk_bytes": Option("int", 256 * 1024 * 1024, minimum=0,
                                          help="Below this much free space on the spool's disk, submissions get "
                                               "503 and /__heartbeat__ fails"),
            "record_client_addr": Option("bool", False,
                                         help="Store each submission's client address in the spool (opt-in)"),
            "trusted_proxies": Option("list", [], items="str", check=_ip_networks,
                                      help="Addresses or CIDR networks (e.g. 127.0.0.1, 10.0.0.0/8) whose "
                                           "X-Forwarded-For is believed"),
            "metrics_interval_s": Option("float", 1.0, minimum=0.1,
                                         help="How often each worker publishes its counters for /status and "
                                              "/metrics of the whole node"),
            "start_timeout_s": Option("float", 30.0, minimum=1.0,
                                      help="Seconds a worker may take to start listening before it counts as failed"),
            "restart_backoff_max_s": Option("float", 30.0, minimum=0.1,
                                            help="Longest wait before restarting a worker that keeps dying "
                                                 "(doubles from 0.5 s)"),
            "orphan_grace_s": Option("float", 30.0, minimum=0.0,
                                     help="Seconds a worker whose supervisor died keeps serving for a new "
                                          "supervisor when no telemetry run is there to start one"),
            "spool": Section(help="The raw spool the edge appends to (docs/spool-format.md)", fields={
                "fsync": Option("str", "interval", choices=("none", "interval", "always"),
                                help="When appended records are forced to disk: none, interval or always"),
                "fsync_interval_ms": Option("int", 1000, minimum=0,
                                            help="With fsync: interval, the most milliseconds between syncs"),
                "max_file_bytes": Option("int", 128 * 1024 * 1024, minimum=1024,
                                         help="A spool file is finished before it would grow past this size"),
                "max_file_age_s": Option("float", 300.0, minimum=0.1,
                                         help="A spool file is finished once it is this many seconds old"),
            }),
        }),
        "convert": Section(help="Histogram conversion", fields={
            "histograms": Section(help="Where Histograms.json revisions come from", fields={
                "server": Option("str", "https://hg.mozilla.org", check=_http_url, nullable=True,
                                 help="hgweb server that serves Histograms.json by revision; null = offline"),
                "cache_dir": Option("path", "./histogram_cache",
                                    help="Disk cache of fetched Histograms.json revisions (shared by processes)"),
                "seed_dirs": Option("list", None, items="str", nullable=True,
                                    help="Read-only caches with the same layout; null = the seed shipped in the package"),
                "connect_timeout": Option("float", 5.0, minimum=0.01, help="Seconds to connect to the server"),
                "read_timeout": Option("float", 30.0, minimum=0.01, help="Seconds to wait for the server's answer"),
                "retries": Option("int", 3, minimum=0, maximum=20,
                                  help="Retries on connection errors and 5xx answers (404 is never retried)"),
                "backoff": Option("float", 0.5, minimum=0.0, help="Back-off factor between retries, in seconds"),
                "negative_ttl": Option("float", 3600.0, minimum=0.0,
                                       help="Seconds a 404 (unknown revision) is remembered before asking again"),
                "negative_max_entries": Option("int", 1024, minimum=1,
                                               help="Most 404 answers remembered (one file, cache_dir/not-found.json; "
                                                    "the oldest go first)"),
                "repositories": Option("list", list(DEFAULT_REPOSITORIES), items="str", check=_repository_patterns,
                                       help="host/repository patterns an info.revision may name ('*' = one path "
                                            "segment); any other revision is quarantined as unknown_revision "
                                            "without a request"),
                "memory_size": Option("int", 64, minimum=1, help="Revisions kept in memory (LRU)"),
                "history_ttl": Option("float", 21600.0, minimum=0.0,
                                      help="Seconds before a repository's Histograms.json history is refreshed"),
                "revision_lookup": Option("str", "exact", choices=("exact", "date"),
                                          help="exact: fetch the ping's own revision; date: the latest change "
                                               "to Histograms.json at or before the revision's date"),
            }),
        }),
        "dedup": Section(help="Idle-daily / saved-session de-duplication (docs/dedup.md)", fields={
            "backend": Option("str", "sqlite", pattern=r"[a-z][a-z0-9_]*",
                              help="Dedup backend plugin: sqlite (embedded, one node), redis (shared by "
                                   "many nodes) or none (no dedup)"),
            "redis_url": Option("str", None, nullable=True, secret=True, check=_redis_url,
                                help="Redis URL for the redis backend; use ${VAR} for credentials"),
            "redis_prefix": Option("str", "telemetry:dedup:", pattern=r"[A-Za-z0-9_.:-]{0,64}",
                                   help="Prefix of every Redis key the redis backend writes (one per session)"),
            "redis_timeout_s": Option("float", 5.0, minimum=0.01,
                                      help="Seconds to connect to Redis and for each Redis command"),
            "redis_retry_s": Option("float", 30.0, minimum=0.0,
                                    help="Seconds a decision retries an unavailable Redis (back-off 50 ms to 1 s) "
                                         "before it fails and the processor retries the input later"),
            "sqlite_path": Option("path", None, nullable=True,
                                  help="SQLite database of the sqlite backend; null = data_dir/state/dedup.sqlite"),
            "lock_timeout_s": Option("float", 30.0, minimum=0.0,
                                     help="Seconds a decision waits for the SQLite write lock before it fails "
                                          "and the processor retries the input later"),
            "expire_days": Option("float", 30.0, minimum=0.00001,
                                  help="A session's dedup state is dropped this many days after its last decision "
                                       "(abandoned idle-dailies); stored records and ledger files are kept"),
            "ledger_max_bytes": Option("int", 64 * 1024 * 1024, minimum=4096,
                                       help="A ledger file (data_dir/ledger/) is finished before it grows past "
                                            "this size"),
            "ledger_max_age_s": Option("float", 3600.0, minimum=0.1,
                                       help="A ledger file is finished (and can be published) once it is this "
                                            "many seconds old"),
        }),
        "compress": Section(help="Compression of finished store files", fields={
            "codec": Option("str", "zstd", pattern=r"[a-z][a-z0-9_]*", help="Codec plugin: zstd, xz or gzip"),
            "level": Option("int", 0, minimum=0, maximum=22,
                            help="Codec level or preset (zstd 1-22, 0 = 1; xz 0-9; "
                                 "gzip 1-9 with 0 = fastest)"),
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
                "part_size_mb": Option("int", 16, minimum=5, maximum=5120,
                                       help="S3 uploads are multipart in parts of this many MiB (a smaller file "
                                            "is one part); AWS needs at least 5"),
                "retries": Option("int", 4, minimum=0, maximum=20,
                                  help="Retries of each S3 request, with back-off (the only retries: botocore's are off)"),
                "connect_timeout": Option("float", 10.0, minimum=0.1,
                                          help="Seconds to wait for a connection to the S3 endpoint"),
                "read_timeout": Option("float", 60.0, minimum=0.1,
                                       help="Seconds to wait for S3 to answer or send more bytes; slower is retried"),
                "encryption": Option("str", "AES256", nullable=True, choices=("AES256", "aws:kms"),
                                     help="Server-side encryption requested for uploads; null = none "
                                          "(e.g. MinIO without KMS)"),
                "kms_key_id": Option("str", None, nullable=True,
                                     help="KMS key for encryption aws:kms; null = the bucket's default key"),
                "keep_local_days": Option("float", 0, minimum=0,
                                          help="Keep local copies of S3-published files in data_dir/archive this "
                                               "many days; 0 = delete right after the verified upload"),
                "writer_principals": Option("list", [], items="str",
                                            help="AWS principals (ARNs) of nodes: write-only access in the bucket "
                                                 "policy (telemetry policy show)"),
                "reader_principals": Option("list", [], items="str",
                                            help="AWS principals (ARNs) of analysts: read-only access in the "
                                                 "bucket policy"),
            }),
        }),
        "retention": Section(help="How long data is kept: telemetry retention sweep (local disk) and "
                                  "telemetry policy apply (S3 lifecycle)", fields={
            "spool_processed_days": Option("float", 0, minimum=0,
                                           help="Keep processed spool files in spool/processed/ for replay this "
                                                "many days; 0 = delete each right after processing"),
            "invalid_days": Option("float", 30, nullable=True, minimum=0,
                                   help="Delete local invalid-record files (archive/_invalid/) older than this; "
                                        "null = keep"),
            "failed_days": Option("float", 30, nullable=True, minimum=0,
                                  help="Delete inputs in failed/ (and their .reason files) older than this; "
                                       "null = keep"),
            "pending_days": Option("float", None, nullable=True, minimum=0,
                                   help="Delete spool files of records parked in pending/ (waiting for their "
                                        "Histograms.json revision) older than this, logging the records lost; "
                                        "null = never"),
            "published_days": Option("float", None, nullable=True, minimum=0,
                                     help="Delete data files of the local archive (backend local) older than "
                                          "this; null = keep forever"),
            "glacier_after_days": Option("int", 90, nullable=True, minimum=0,
                                         help="S3: move data objects to glacier_storage_class this many days "
                                              "after upload; null = never"),
            "glacier_storage_class": Option("str", "GLACIER",
                                            choices=("GLACIER", "DEEP_ARCHIVE", "GLACIER_IR", "STANDARD_IA",
                                                     "ONEZONE_IA", "INTELLIGENT_TIERING"),
                                            help="S3 storage class data objects move to after glacier_after_days"),
            "expire_after_days": Option("int", None, nullable=True, minimum=1,
                                        help="S3: delete data objects this many days after upload; "
                                             "null = keep forever"),
            "invalid_expire_after_days": Option("int", 90, nullable=True, minimum=1,
                                                help="S3: delete _invalid/ objects this many days after upload; "
                                                     "null = keep forever"),
            "abort_incomplete_uploads_days": Option("int", 7, nullable=True, minimum=1,
                                                    help="S3: abort multipart uploads left unfinished this many "
                                                         "days (their parts cost storage); null = never"),
        }),
        "process": Section(help="The processor: spool files to published, compressed files", fields={
            "workers": Option("int", 1, minimum=1, maximum=64,
                              help="Processor worker processes; they coordinate by claiming spool files"),
            "poll_interval": Option("float", 1.0, minimum=0.01,
                                    help="Seconds between looks for finished spool files when idle"),
            "log_files": Option("bool", True,
                                help="Log one INFO line per processed spool file (records, seconds, MB/s)"),
            "max_inflated_bytes": Option("int", 20 * 1024 * 1024, minimum=1024,
                                         help="Largest inflated body accepted; bigger ones are oversized_data"),
            "max_attempts": Option("int", 5, minimum=1,
                                   help="Failed attempts at a spool file before it moves to failed/"),
            "retry_backoff": Option("float", 5.0, minimum=0.0,
                                    help="Seconds before the first retry of a failed spool file; doubles each time"),
            "max_backoff": Option("float", 600.0, minimum=0.0,
                                  help="Longest wait between retries (outages are retried for as long as they last)"),
            "min_free_disk_bytes": Option("int", 64 * 1024 * 1024, minimum=0,
                                          help="Below this much free space on data_dir's disk the processor pauses "
                                               "(a full disk is an outage: nothing moves to failed/); keep it below "
                                               "receive.min_free_disk_bytes (docs/storage.md)"),
            "disk_retry_s": Option("float", 5.0, minimum=0.01,
                                   help="Seconds between looks at the free space while the processor is paused "
                                        "for a full disk"),
            "pending_retry_s": Option("float", 60.0, minimum=0.0,
                                      help="Seconds before records parked for an unreachable Histograms.json "
                                           "revision are tried again; doubles each time"),
            "pending_max_retry_s": Option("float", 3600.0, minimum=0.0,
                                          help="Longest wait between tries of a parked revision"),
            "limits": Section(help="What one record may cost; a record past a limit is quarantined under the "
                                   "limit's category (docs/storage.md)", fields={
                "max_depth": Option("int", 64, minimum=2, maximum=1000,
                                    help="Deepest nesting of objects/arrays in a payload (too_deep)"),
                "max_key_length": Option("int", 1024, minimum=16,
                                         help="Longest object key, in characters, at any depth (key_too_long)"),
                "max_histograms": Option("int", 10000, minimum=1,
                                         help="Most histograms in one payload: classic, add-on and keyed "
                                              "together (too_many_histograms)"),
                "max_buckets": Option("int", 10000, minimum=3, maximum=10000,
                                      help="Most buckets an add-on histogram may claim (too_many_buckets)"),
            }),
        }),
        "reduce": Section(help="MapReduce jobs (telemetry mapreduce, docs/mapreduce.md)", fields={
            "executor": Option("str", "local", pattern=r"[a-z][a-z0-9_]*",
                               help="Executor plugin: local (processes) or spark"),
            "mappers": Option("int", "auto", minimum=1, maximum=4096, auto=True,
                              help="Mapper processes (Spark: map tasks) when --mappers is not given; "
                                   "'auto' = number of cores"),
            "reducers": Option("int", 1, minimum=1, maximum=4096,
                               help="Reducers when --reducers is not given"),
            "work_dir": Option("path", None, nullable=True,
                               help="Where jobs keep their intermediate files (removed after each job); "
                                    "null = data_dir/mapreduce"),
            "progress": Option("bool", True,
                               help="Draw a progress bar (files, bytes, records, rate) when stderr is a terminal"),
            "combine_size": Option("int", 50, minimum=2,
                                   help="Values a key collects before the job's combine() runs on them"),
            "max_tracebacks": Option("int", 5, minimum=0, maximum=1000,
                                     help="Tracebacks of failing job code kept and shown (the rest are counted)"),
            "spark": Section(help="The spark executor's session (ignored when one is already active, "
                                  "e.g. under spark-submit)", fields={
                "master": Option("str", None, nullable=True,
                                 help="Spark master URL (local[2], yarn, spark://...); null = spark-submit's, "
                                      "else local[*]"),
                "app_name": Option("str", "telemetry-mapreduce", help="Spark application name"),
                "python": Option("str", None, nullable=True,
                                 help="Python of the Spark workers; null = this interpreter when the session "
                                      "is started here, spark-submit's otherwise"),
                "log_level": Option("str", "WARN", choices=("ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL",
                                                            "OFF"),
                                    help="Log level of the Spark driver"),
                "conf": Option("dict", {}, help="Extra Spark settings (e.g. spark.executor.memory: 4g)"),
            }),
        }),
        "doctor": Section(help="Limits of telemetry doctor, the node health check", fields={
            "timeout_s": Option("float", 3.0, minimum=0.1,
                                help="Seconds each network check (S3, Redis, Histograms.json server) may take"),
            "max_spool_backlog_files": Option("int", 100, minimum=0,
                                              help="More finished spool files waiting than this is unhealthy"),
            "max_spool_age_s": Option("float", 3600.0, minimum=0.0,
                                      help="A finished spool file waiting longer than this many seconds is unhealthy"),
            "max_clock_skew_s": Option("float", 300.0, minimum=0.0,
                                       help="Largest difference from a server's Date header (S3, Histograms.json) "
                                            "that counts as a sane clock"),
        }),
        "supervise": Section(help="How telemetry run restarts services that die (docs/operations/deploy.md)",
                             fields={
            "backoff_initial_s": Option("float", 0.5, minimum=0.0,
                                        help="Wait before restarting a service that died; doubles while it "
                                             "keeps dying quickly"),
            "backoff_max_s": Option("float", 30.0, minimum=0.1,
                                    help="Longest wait before a restart (a service that lived this long starts "
                                         "again from backoff_initial_s)"),
            "crash_loop_restarts": Option("int", 5, minimum=1,
                                          help="Restarts of one service within crash_loop_window_s after which "
                                               "the node gives up and exits 4"),
            "crash_loop_window_s": Option("float", 60.0, minimum=1.0,
                                          help="The window, in seconds, in which crash_loop_restarts are counted"),
            "stop_timeout_s": Option("float", 30.0, minimum=0.0,
                                     help="Seconds a service may take to stop (on SIGTERM, or before a restart) "
                                          "before it is killed"),
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
            "node_interval_s": Option("float", 1.0, minimum=0.1,
                                      help="How often processor workers and the telemetry run parent publish "
                                           "their counters for /status, /metrics and the dashboard"),
            "heartbeat_s": Option("float", 60.0, minimum=0.0,
                                  help="Seconds between telemetry run's one-line heartbeat log (rates, backlog); "
                                       "0 = off"),
        }),
        "admin": Section(help="The node's operator endpoints (/status, /metrics, /dashboard)", fields={
            "token": Option("str", None, nullable=True, secret=True,
                            help="When set, /status, /metrics and /dashboard require "
                                 "Authorization: Bearer <token>; use ${VAR}"),
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
