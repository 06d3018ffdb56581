"""``telemetry doctor``: an operator's health check of one node.

Each check returns a :class:`CheckResult` and prints one line::

    ok    data dir: /srv/telemetry/data writable, 41.2 GiB free (floor 256.0 MiB)
    FAIL  redis: cannot reach 127.0.0.1:6390 (Connection refused); fix: start redis-server or correct dedup.redis_url
    warn  histograms: server https://hg.mozilla.org unreachable, 3 seeded revisions used offline; fix: ...

``warn`` lines do not make the node unhealthy; any ``FAIL`` does (exit 1).
Checks that do not apply to the configuration (S3 when the publish backend
is local, Redis when dedup is not redis, Spark when the executor is local)
are skipped, with a line saying so.  The checks talk to the real services
with short timeouts (``doctor.timeout_s``) and change nothing, except one
temporary file written and removed in ``data_dir`` to prove it is writable.
"""

from __future__ import annotations

import email.utils
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import click

from ..redaction import redact
from ..hookspecs import hookimpl
from ..commands import config_options

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
#: Earliest plausible wall clock (the first telemetry-core release year); before this the clock is wrong.
EARLIEST_SANE_TIME = 1_700_000_000.0


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``status`` is ok, warn, FAIL or skip; ``fix`` says what to do."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        """The one line printed for this check."""
        text = f"{self.status:<5} {self.name}: {self.detail}"
        return redact(f"{text}; fix: {self.fix}" if self.fix and self.status in (FAIL, WARN) else text)


def _size(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    raise AssertionError("unreachable")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --------------------------------------------------------------------------- local checks


def check_data_dir(config: Any) -> CheckResult:
    """``data_dir`` exists, a file can be created in it, and free space is above ``receive.min_free_disk_bytes``."""
    data_dir = config.data_dir
    floor = int(config["receive"]["min_free_disk_bytes"])
    if not data_dir.is_dir():
        return CheckResult("data dir", FAIL, f"{data_dir} does not exist or is not a directory",
                           "create it owned by the service user (deploy/bootstrap.sh does) or correct data_dir")
    try:
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".doctor-", delete=True) as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as exc:
        return CheckResult("data dir", FAIL, f"{data_dir} is not writable ({exc.strerror or _one_line(exc)})",
                           f"chown -R the service user {data_dir} and check the mount is read-write")
    free = shutil.disk_usage(data_dir).free
    if free <= floor:
        return CheckResult("data dir", FAIL, f"{data_dir}: {_size(free)} free, below the floor "
                                             f"receive.min_free_disk_bytes = {_size(floor)} (the edge answers 503)",
                           "free disk space (telemetry retention sweep, check the processor keeps up) "
                           "or grow the volume")
    return CheckResult("data dir", OK, f"{data_dir} writable, {_size(free)} free (floor {_size(floor)})")


def check_spool(config: Any, *, now: float | None = None) -> CheckResult:
    """Finished spool files waiting for the processor: how many and how old the oldest is."""
    from ..store.spool.files import SpoolFileName, list_finished_files

    now = time.time() if now is None else now
    waiting = list_finished_files(config.data_dir / "spool")
    max_files = int(config["doctor"]["max_spool_backlog_files"])
    max_age = float(config["doctor"]["max_spool_age_s"])
    if not waiting:
        return CheckResult("spool backlog", OK, "no finished spool file waiting")
    oldest = waiting[0]
    parsed = SpoolFileName.parse(oldest.name)
    started = parsed.started_ms / 1000 if parsed else oldest.stat().st_mtime
    age = max(0.0, now - started)
    detail = f"{len(waiting)} finished spool files waiting, oldest {oldest.name} from {_age(age)} ago"
    fix = "start or scale the processor (systemctl status telemetry-process; process.workers), " \
          "and look in failed/ and the processor log"
    if age > max_age:
        return CheckResult("spool backlog", FAIL, f"{detail} (limit doctor.max_spool_age_s = {_age(max_age)})", fix)
    if len(waiting) > max_files:
        return CheckResult("spool backlog", FAIL,
                           f"{detail} (limit doctor.max_spool_backlog_files = {max_files})", fix)
    return CheckResult("spool backlog", OK, detail)


def check_clock(reference: tuple[str, float] | None, config: Any, *, now: float | None = None) -> CheckResult:
    """The wall clock is plausible and, when a server answered with a ``Date`` header, close to it."""
    now = time.time() if now is None else now
    max_skew = float(config["doctor"]["max_clock_skew_s"])
    fix = "enable time synchronisation (timedatectl set-ntp true, or chrony) and check the time zone is UTC-based"
    if now < EARLIEST_SANE_TIME:
        return CheckResult("clock", FAIL, f"wall clock reads {time.strftime('%Y-%m-%d', time.gmtime(now))}, "
                                          f"before any plausible date", fix)
    if reference is None:
        return CheckResult("clock", OK, f"wall clock {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))} "
                                        f"(no server answered with a Date to compare)")
    source, server_time = reference
    skew = now - server_time
    if abs(skew) > max_skew:
        return CheckResult("clock", FAIL, f"{abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} {source} "
                                          f"(limit doctor.max_clock_skew_s = {max_skew:.0f} s); submission dates "
                                          f"and S3 request signatures depend on it", fix)
    return CheckResult("clock", OK, f"within {abs(skew):.0f} s of {source}")


# --------------------------------------------------------------------------- remote checks


def check_s3(config: Any, timeout: float, references: list[tuple[str, float]]) -> list[CheckResult]:
    """Bucket reachable with these credentials; lifecycle rules and bucket policy as configured."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    from ..errors import ConfigError
    from ..store.s3.publisher import S3Settings, make_client
    from ..store.s3.policy import lifecycle_rules, policy_for_config, rule_id_prefix

    if config["store"]["publish"]["backend"] != "s3":
        return [CheckResult("s3", SKIP, f"store.publish.backend is {config['store']['publish']['backend']}")]
    try:
        settings = S3Settings.from_config(config)
    except ConfigError as exc:
        return [CheckResult("s3", FAIL, _one_line(exc), "complete store.publish in the config")]
    settings = S3Settings(bucket=settings.bucket, prefix=settings.prefix, endpoint_url=settings.endpoint_url,
                          region=settings.region, retries=0, connect_timeout=timeout, read_timeout=timeout,
                          encryption=settings.encryption, kms_key_id=settings.kms_key_id)
    where = f"s3://{settings.bucket}" + (f" at {settings.endpoint_url}" if settings.endpoint_url else "")
    client = make_client(settings)
    try:
        answer = client.head_bucket(Bucket=settings.bucket)
    except NoCredentialsError:
        return [CheckResult("s3", FAIL, f"no AWS credentials found for {where}",
                            "give the node an instance role, or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                            "in the service environment file")]
    except EndpointConnectionError as exc:
        return [CheckResult("s3", FAIL, f"cannot reach {where} ({_one_line(exc)})",
                            "check store.publish.endpoint_url, the network path and that the S3 service is up")]
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 404:
            return [CheckResult("s3", FAIL, f"bucket {settings.bucket} does not exist at "
                                            f"{settings.endpoint_url or 'AWS'}",
                                "create the bucket (docs/operations/s3.md) or correct store.publish.bucket")]
        if status in (401, 403):
            return [CheckResult("s3", FAIL, f"credentials refused by {where} (HTTP {status})",
                                "check the node's IAM role/keys and the bucket policy's writer_principals")]
        return [CheckResult("s3", FAIL, f"{where} answered HTTP {status}: {_one_line(exc)}",
                            "retry later; check the S3 service's status")]
    except BotoCoreError as exc:
        return [CheckResult("s3", FAIL, f"cannot reach {where} ({_one_line(exc)})",
                            "check store.publish.endpoint_url, the network path and that the S3 service is up")]
    date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        references.append((settings.endpoint_url or "S3", email.utils.parsedate_to_datetime(date).timestamp()))
    results = [CheckResult("s3", OK, f"{where} reachable, credentials accepted")]
    results.append(_check_lifecycle(client, settings.bucket, settings.prefix,
                                    lifecycle_rules(config["retention"], settings.prefix),
                                    rule_id_prefix(settings.prefix), ClientError))
    section = config["store"]["publish"]
    if section.get("writer_principals") or section.get("reader_principals"):
        try:
            expected_policy = policy_for_config(config)
        except ConfigError as exc:
            results.append(CheckResult("s3 bucket policy", FAIL, _one_line(exc), "correct store.publish principals"))
        else:
            results.append(_check_policy(client, settings.bucket, expected_policy, ClientError))
    else:
        results.append(CheckResult("s3 bucket policy", SKIP, "no writer_principals or reader_principals configured"))
    return results


def _comparable(rule: dict[str, Any]) -> str:
    """A rule as the fields we set, so a server's added defaults do not count as a difference."""
    keep = ("ID", "Status", "Filter", "Expiration", "Transitions", "AbortIncompleteMultipartUpload")
    return json.dumps({key: rule.get(key) for key in keep if key in rule}, sort_keys=True)


def _check_lifecycle(client: Any, bucket: str, prefix: str, expected: list[dict[str, Any]], owner: str,
                     client_error: type[Exception]) -> CheckResult:
    fix = "run telemetry policy apply --config FILE (the bootstrap's timer does this daily)"
    try:
        existing = client.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except client_error as exc:  # type: ignore[misc]
        if getattr(exc, "response", {}).get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
            return CheckResult("s3 lifecycle", FAIL, f"cannot read the lifecycle of {bucket}: {_one_line(exc)}",
                               "allow s3:GetLifecycleConfiguration to the node, or check from an admin role")
        existing = []
    ours = {rule.get("ID"): _comparable(rule) for rule in existing if str(rule.get("ID", "")).startswith(owner)}
    wanted = {rule["ID"]: _comparable(rule) for rule in expected}
    missing = sorted(set(wanted) - set(ours))
    stale = sorted(key for key in set(wanted) & set(ours) if wanted[key] != ours[key])
    extra = sorted(set(ours) - set(wanted))
    if missing or stale or extra:
        parts = [f"{len(missing)} rules missing"] if missing else []
        parts += [f"{len(stale)} differ from the config"] if stale else []
        parts += [f"{len(extra)} no longer configured"] if extra else []
        return CheckResult("s3 lifecycle", FAIL, f"{bucket}: {', '.join(parts)} (of {len(wanted)} from retention.*)",
                           fix)
    return CheckResult("s3 lifecycle", OK, f"{len(wanted)} rules in force as configured")


def _check_policy(client: Any, bucket: str, expected: dict[str, Any], client_error: type[Exception]) -> CheckResult:
    fix = "review telemetry policy show, then run telemetry policy apply --bucket-policy"
    try:
        document = json.loads(client.get_bucket_policy(Bucket=bucket)["Policy"])
    except client_error as exc:  # type: ignore[misc]
        if getattr(exc, "response", {}).get("Error", {}).get("Code") == "NoSuchBucketPolicy":
            return CheckResult("s3 bucket policy", FAIL, f"{bucket} has no bucket policy", fix)
        return CheckResult("s3 bucket policy", FAIL, f"cannot read the policy of {bucket}: {_one_line(exc)}",
                           "allow s3:GetBucketPolicy to the node, or check from an admin role")
    if _normalize(document) != _normalize(expected):
        return CheckResult("s3 bucket policy", FAIL, f"the policy of {bucket} differs from the generated one", fix)
    return CheckResult("s3 bucket policy", OK, f"{len(expected['Statement'])} statements as configured")


def _normalize(value: Any) -> Any:
    """Order-insensitive form of a policy (S3 may return single-item lists as strings and vice versa)."""
    if isinstance(value, dict):
        return {key: _normalize(item) for key, item in value.items()}
    if isinstance(value, list):
        items = [_normalize(item) for item in value]
        return items[0] if len(items) == 1 else sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    return value


def check_redis(config: Any, timeout: float) -> CheckResult:
    """When ``dedup.backend`` is redis: ``PING`` answers at ``dedup.redis_url``."""
    from ..dedup.redis_backend import _where

    dedup = config["dedup"]
    if dedup["backend"] != "redis":
        return CheckResult("redis", SKIP, f"dedup.backend is {dedup['backend']}")
    url = dedup.get("redis_url")
    if not url:
        return CheckResult("redis", FAIL, "dedup.backend is redis but dedup.redis_url is not set",
                           "set dedup.redis_url (credentials as ${VAR})")
    try:
        import redis
    except ImportError:
        return CheckResult("redis", FAIL, "the redis package is not installed",
                           "pip install 'telemetry-core[redis]' in the node's virtualenv")
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=None)
    try:
        client.ping()
        version = client.info("server").get("redis_version", "?")
    except redis.AuthenticationError as exc:
        return CheckResult("redis", FAIL, f"{_where(url)} refused the credentials ({_one_line(exc)})",
                           "check the password variable referenced by dedup.redis_url")
    except redis.RedisError as exc:
        return CheckResult("redis", FAIL, f"cannot reach {_where(url)} ({_one_line(exc)})",
                           "start redis-server (systemctl start redis-server) or correct dedup.redis_url")
    finally:
        client.close()
    return CheckResult("redis", OK, f"{_where(url)} answers PING (redis {version})")


def check_histograms(config: Any, timeout: float, references: list[tuple[str, float]]) -> CheckResult:
    """The Histograms.json server answers, or revisions are available offline (seed or disk cache)."""
    import requests

    from ..convert.revisions import DEFAULT_SEED_DIR

    section = config["convert"]["histograms"]
    seeds = section.get("seed_dirs")
    roots = [Path(section["cache_dir"])] + [Path(p) for p in (seeds if seeds is not None else [DEFAULT_SEED_DIR])]
    cached = sum(1 for root in roots if root.is_dir() for _ in root.rglob("Histograms.json"))
    offline = f"{cached} cached or seeded revisions" if cached else "no cached or seeded revision"
    server = section.get("server")
    if not server:
        if cached:
            return CheckResult("histograms", OK, f"offline (server null), {offline}")
        return CheckResult("histograms", FAIL, f"offline (server null) and {offline}: every ping with a "
                                               f"revision goes to invalid/ as missing_revision",
                           "set convert.histograms.server or add seed_dirs holding <repo>/<rev>/Histograms.json")
    try:
        answer = requests.head(server, timeout=(timeout, timeout), allow_redirects=True)
    except requests.RequestException as exc:
        reason = type(exc).__name__
        if cached:
            return CheckResult("histograms", WARN, f"server {server} unreachable ({reason}); {offline} "
                                                   f"still convert offline",
                               "check the network path to the server (new revisions wait for it)")
        return CheckResult("histograms", FAIL, f"server {server} unreachable ({reason}) and {offline}",
                           "check convert.histograms.server and the network path, or seed the cache "
                           "(convert.histograms.seed_dirs)")
    if answer.headers.get("Date"):
        references.append((server, email.utils.parsedate_to_datetime(answer.headers["Date"]).timestamp()))
    if answer.status_code >= 500:
        status = WARN if cached else FAIL
        return CheckResult("histograms", status, f"server {server} answered HTTP {answer.status_code}; {offline}",
                           "retry later; check the server")
    return CheckResult("histograms", OK, f"server {server} reachable (HTTP {answer.status_code}); {offline}")


def check_converter(compiled: bool | None = None) -> CheckResult:
    """Whether histogram conversion runs compiled (``telemetry_core.convert._speedups``) or in pure Python."""
    if compiled is None:
        from ..convert.conversion import COMPILED as compiled
    if compiled:
        return CheckResult("converter", OK, "compiled fast path in use")
    return CheckResult("converter", WARN, "pure-Python conversion (the C extension was not built): "
                                          "same results, about 3x slower",
                       "install a C compiler and the Python headers (apt-get install build-essential "
                       "python3-dev), then reinstall telemetry-core")


def check_spark(config: Any, timeout: float) -> CheckResult:
    """When ``reduce.executor`` is spark: a Java runtime runs and pyspark imports."""
    executor = config["reduce"]["executor"]
    if executor != "spark":
        return CheckResult("spark", SKIP, f"reduce.executor is {executor}")
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        return CheckResult("spark", FAIL, "no java found (JAVA_HOME unset and no java on PATH)",
                           "apt-get install openjdk-17-jre-headless, or set JAVA_HOME")
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=max(timeout, 10.0))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return CheckResult("spark", FAIL, f"{java} -version failed ({_one_line(exc)})",
                           "reinstall the JRE or point JAVA_HOME at a working one")
    if done.returncode != 0:
        return CheckResult("spark", FAIL, f"{java} -version exited {done.returncode}",
                           "reinstall the JRE or point JAVA_HOME at a working one")
    version = (done.stderr or done.stdout).splitlines()[0] if (done.stderr or done.stdout) else "?"
    if importlib.util.find_spec("pyspark") is None:
        return CheckResult("spark", FAIL, f"java ok ({version}) but pyspark is not installed",
                           "pip install 'telemetry-core[spark]' in the node's virtualenv")
    return CheckResult("spark", OK, f"java {version.strip()!s}; pyspark importable")


# --------------------------------------------------------------------------- running


def run_checks(config: Any, *, now: float | None = None) -> list[CheckResult]:
    """Every check, in the order printed (the clock last: it compares with servers' answers)."""
    timeout = float(config["doctor"]["timeout_s"])
    references: list[tuple[str, float]] = []
    checks: list[Callable[[], Iterable[CheckResult]]] = [
        lambda: [check_data_dir(config)],
        lambda: [check_spool(config, now=now)],
        lambda: check_s3(config, timeout, references),
        lambda: [check_redis(config, timeout)],
        lambda: [check_histograms(config, timeout, references)],
        lambda: [check_converter()],
        lambda: [check_spark(config, timeout)],
        lambda: [check_clock(references[0] if references else None, config, now=now)],
    ]
    results: list[CheckResult] = []
    for check in checks:
        results.extend(check())
    return results


@hookimpl
def telemetry_register_commands(cli: click.Group) -> None:
    """Add ``telemetry doctor``."""

    @cli.command()
    @config_options
    def doctor(config_path: str | None, overrides: tuple[str, ...]) -> None:
        """Check this node's health: config, disk, spool backlog, clock, S3, Redis,
        Histograms.json, Spark. One line per check with a fix hint; exit 0 when
        healthy, 1 when any check failed."""
        from ..engine import Engine
        from ..errors import ConfigError, PluginLoadError

        try:
            engine = Engine.from_config(config_path, overrides, configure_logs=False)
        except (ConfigError, PluginLoadError) as exc:
            first, *rest = str(exc).splitlines() or [type(exc).__name__]
            suffix = f" (+{len(rest)} more)" if rest else ""
            click.echo(CheckResult("config", FAIL, f"{first}{suffix}",
                                   "run telemetry config check --config FILE for every problem").line())
            raise SystemExit(1)
        click.echo(CheckResult("config", OK, f"{engine.config.source} is valid").line())
        results = run_checks(engine.config)
        for result in results:
            click.echo(result.line())
        failed = [result.name for result in results if result.status == FAIL]
        if failed:
            click.echo(f"unhealthy: {len(failed)} failed ({', '.join(failed)})")
            raise SystemExit(1)
        click.echo("healthy")
