"""``telemetry doctor`` against real local components: moto's S3 server, a
redis-server on a free port, a Histograms.json HTTP server on loopback; each
failure provoked for real (missing bucket, server down, stale spool ...)."""

from __future__ import annotations

import email.utils
import json
import os
import shutil
import subprocess
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any, Iterator

import pytest
import yaml
from click.testing import CliRunner

from dedup_helpers import RedisServer
from s3_helpers import (bucket, dead_endpoint, fake_aws_credentials, fault_proxy, moto_endpoint,  # noqa: F401
                        s3_client)
from telemetry_core.cli import cli
from telemetry_core.config.loader import read_config, validate
from telemetry_core.store.s3.policy import apply_lifecycle, policy_for_config
from telemetry_core.store.spool.files import SpoolFileName

NODE_ARN = "arn:aws:iam::123456789012:role/telemetry-node"


class HistogramsServer:
    """An hgweb stand-in on loopback answering every request 200, with a ``Date`` ``offset_s`` off."""

    def __init__(self, offset_s: float = 0.0) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                return

            def date_time_string(self, timestamp: float | None = None) -> str:
                return email.utils.formatdate(time.time() + server.offset_s, usegmt=True)

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD

        self.offset_s = offset_s
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hg_server() -> Iterator[HistogramsServer]:
    server = HistogramsServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def node(tmp_path: Path, hg_server: HistogramsServer) -> dict[str, Any]:
    """A healthy local node's config (as a dict to amend), data dir created."""
    (tmp_path / "data").mkdir()
    return {
        "data_dir": str(tmp_path / "data"),
        "convert": {"histograms": {"server": hg_server.url, "cache_dir": str(tmp_path / "cache"),
                                   "retries": 0}},
        "doctor": {"timeout_s": 2.0},
    }


def s3_node(node: dict[str, Any], endpoint: str, bucket_name: str, **publish: Any) -> dict[str, Any]:
    node["store"] = {"publish": {"backend": "s3", "bucket": bucket_name, "endpoint_url": endpoint,
                                 "retries": 0, **publish}}
    return node


def doctor(tmp_path: Path, config: dict[str, Any], *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["doctor", "--config", str(path), *args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def line(output: str, name: str) -> str:
    found = [text for text in output.splitlines() if text[6:].startswith(f"{name}:")]
    assert found, f"no line for {name!r} in:\n{output}"
    return found[0]


def apply_policies(config: dict[str, Any], tmp_path: Path, client: Any, bucket_name: str) -> None:
    path = tmp_path / "apply.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = validate(read_config(path))
    apply_lifecycle(client, bucket_name, "", loaded["retention"])
    if config["store"]["publish"].get("writer_principals"):
        client.put_bucket_policy(Bucket=bucket_name, Policy=json.dumps(policy_for_config(loaded)))


# --------------------------------------------------------------------------- healthy


def test_healthy_local_node_exits_0(tmp_path, node):
    code, output = doctor(tmp_path, node)
    assert code == 0, output
    assert output.splitlines()[-1] == "healthy"
    assert line(output, "data dir").startswith("ok")
    assert line(output, "histograms").startswith("ok")
    assert line(output, "clock").startswith("ok") and "within" in line(output, "clock")
    assert line(output, "s3").startswith("skip") and line(output, "redis").startswith("skip")
    assert line(output, "converter") == "ok    converter: compiled fast path in use"


def test_pure_python_converter_warns_with_the_fix_and_still_exits_0(tmp_path, node, monkeypatch):
    monkeypatch.setattr("telemetry_core.convert.conversion.COMPILED", False)
    code, output = doctor(tmp_path, node)
    assert code == 0, output
    text = line(output, "converter")
    assert text.startswith("warn") and "pure-Python" in text and "build-essential python3-dev" in text


def test_healthy_s3_redis_spark_node_exits_0_through_the_console_script(
        tmp_path, node, moto_endpoint, s3_client, bucket, redis_server, telemetry_cli, monkeypatch):
    monkeypatch.setenv("DOCTOR_REDIS_URL", redis_server.url)
    config = s3_node(node, moto_endpoint, bucket, writer_principals=[NODE_ARN])
    config["dedup"] = {"backend": "redis", "redis_url": "${DOCTOR_REDIS_URL}"}
    config["reduce"] = {"executor": "spark"}
    apply_policies(config, tmp_path, s3_client, bucket)
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([*telemetry_cli, "doctor", "--config", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("config", "s3", "s3 lifecycle", "s3 bucket policy", "redis", "spark", "clock"):
        assert line(done.stdout, name).startswith("ok"), done.stdout


# --------------------------------------------------------------------------- provoked failures


def test_invalid_config_fails_with_a_hint(tmp_path, node):
    node["receive"] = {"prot": 8080}
    code, output = doctor(tmp_path, node)
    assert code == 1
    assert line(output, "config").startswith("FAIL") and "receive.prot" in output
    assert "fix: run telemetry config check" in output


def test_missing_data_dir_fails(tmp_path, node):
    node["data_dir"] = str(tmp_path / "nowhere")
    code, output = doctor(tmp_path, node)
    assert code == 1
    assert line(output, "data dir").startswith("FAIL") and "does not exist" in output


def test_unwritable_data_dir_fails(tmp_path, node):
    """Mode 0555; as root (which ignores modes) the directory is made immutable with chattr +i."""
    data = Path(node["data_dir"])
    data.chmod(0o555)
    immutable = False
    try:
        if os.access(data, os.W_OK):
            chattr = shutil.which("chattr")
            if chattr is None or subprocess.run([chattr, "+i", str(data)], capture_output=True).returncode != 0:
                pytest.skip("running as root and chattr +i is unavailable here: nothing can make a directory "
                            "unwritable (test_data_dir_that_is_a_file_fails covers the failure path)")
            immutable = True
        code, output = doctor(tmp_path, node)
    finally:
        if immutable:
            subprocess.run([shutil.which("chattr") or "chattr", "-i", str(data)], check=True)
        data.chmod(0o755)
    assert code == 1
    assert "not writable" in line(output, "data dir") and "fix: chown" in output


def test_data_dir_that_is_a_file_fails(tmp_path, node):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    node["data_dir"] = str(blocker)
    code, output = doctor(tmp_path, node)
    assert code == 1 and line(output, "data dir").startswith("FAIL")


def test_free_space_floor_above_what_is_free_fails(tmp_path, node):
    node["receive"] = {"min_free_disk_bytes": 1 << 60}
    code, output = doctor(tmp_path, node)
    assert code == 1
    assert "below the floor receive.min_free_disk_bytes" in line(output, "data dir")


def _finished_spool_file(data_dir: Path, started: float, sequence: int) -> Path:
    finished = data_dir / "spool" / "finished"
    finished.mkdir(parents=True, exist_ok=True)
    path = finished / str(SpoolFileName(started_ms=int(started * 1000), node_id="n1", pid=42, sequence=sequence))
    path.write_bytes(b"")
    return path


def test_stale_spool_backlog_fails_and_names_the_oldest_file(tmp_path, node):
    data = Path(node["data_dir"])
    oldest = _finished_spool_file(data, time.time() - 7200, 1)
    _finished_spool_file(data, time.time() - 10, 2)
    code, output = doctor(tmp_path, node)
    assert code == 1
    text = line(output, "spool backlog")
    assert text.startswith("FAIL") and oldest.name in text and "2 finished spool files" in text


def test_fresh_spool_backlog_is_ok_until_too_many_files(tmp_path, node):
    data = Path(node["data_dir"])
    for sequence in range(3):
        _finished_spool_file(data, time.time() - 5, sequence)
    code, output = doctor(tmp_path, node)
    assert code == 0 and line(output, "spool backlog").startswith("ok")
    node["doctor"]["max_spool_backlog_files"] = 2
    code, output = doctor(tmp_path, node)
    assert code == 1 and "max_spool_backlog_files" in line(output, "spool backlog")


def test_clock_far_from_the_servers_date_fails(tmp_path, node, hg_server):
    hg_server.offset_s = -3 * 3600  # the server says three hours earlier: our clock is ahead
    code, output = doctor(tmp_path, node)
    assert code == 1
    text = line(output, "clock")
    assert text.startswith("FAIL") and "ahead of" in text and "fix: enable time synchronisation" in text


def test_histograms_server_unreachable_without_seed_fails(tmp_path, node):
    node["convert"]["histograms"].update(server=dead_endpoint(), seed_dirs=[])
    code, output = doctor(tmp_path, node)
    assert code == 1
    text = line(output, "histograms")
    assert text.startswith("FAIL") and "unreachable" in text and "no cached or seeded revision" in text


def test_histograms_server_unreachable_with_the_packaged_seed_only_warns(tmp_path, node):
    node["convert"]["histograms"]["server"] = dead_endpoint()
    code, output = doctor(tmp_path, node)
    assert code == 0, output
    assert line(output, "histograms").startswith("warn")


def test_offline_without_seed_fails(tmp_path, node):
    node["convert"]["histograms"].update(server=None, seed_dirs=[])
    code, output = doctor(tmp_path, node)
    assert code == 1 and "offline (server null)" in line(output, "histograms")


def test_s3_bucket_missing_fails(tmp_path, node, moto_endpoint):
    code, output = doctor(tmp_path, s3_node(node, moto_endpoint, "no-such-bucket-here"))
    assert code == 1
    assert "does not exist" in line(output, "s3") and "create the bucket" in output


def test_s3_down_fails(tmp_path, node):
    code, output = doctor(tmp_path, s3_node(node, dead_endpoint(), "telemetry-archive"))
    assert code == 1
    text = line(output, "s3")
    assert text.startswith("FAIL") and "cannot reach" in text and "endpoint_url" in text


def test_s3_credentials_refused_fails(tmp_path, node, fault_proxy, bucket):
    fault_proxy.arm("status", status=403, times=10, match=lambda method, path: method == "HEAD")
    code, output = doctor(tmp_path, s3_node(node, fault_proxy.url, bucket))
    assert code == 1
    text = line(output, "s3")
    assert "credentials refused" in text and "HTTP 403" in text and "IAM role" in text


def test_s3_lifecycle_missing_then_applied(tmp_path, node, moto_endpoint, s3_client, bucket):
    config = s3_node(node, moto_endpoint, bucket)
    code, output = doctor(tmp_path, config)
    assert code == 1
    assert line(output, "s3").startswith("ok")
    assert "rules missing" in line(output, "s3 lifecycle") and "telemetry policy apply" in output
    apply_policies(config, tmp_path, s3_client, bucket)
    code, output = doctor(tmp_path, config)
    assert code == 0, output
    assert line(output, "s3 lifecycle").startswith("ok")


def test_s3_lifecycle_differing_from_the_config_fails(tmp_path, node, moto_endpoint, s3_client, bucket):
    config = s3_node(node, moto_endpoint, bucket)
    apply_policies(config, tmp_path, s3_client, bucket)
    config["retention"] = {"glacier_after_days": 30}
    code, output = doctor(tmp_path, config)
    assert code == 1 and "differ from the config" in line(output, "s3 lifecycle")


def test_s3_bucket_policy_missing_fails(tmp_path, node, moto_endpoint, s3_client, bucket):
    config = s3_node(node, moto_endpoint, bucket, writer_principals=[NODE_ARN])
    apply_lifecycle(s3_client, bucket, "", validate(read_config(None))["retention"])
    code, output = doctor(tmp_path, config)
    assert code == 1
    assert "has no bucket policy" in line(output, "s3 bucket policy") and "--bucket-policy" in output


def test_redis_down_fails(tmp_path, node):
    node["dedup"] = {"backend": "redis", "redis_url": dead_endpoint().replace("http", "redis")}
    code, output = doctor(tmp_path, node)
    assert code == 1
    text = line(output, "redis")
    assert text.startswith("FAIL") and "cannot reach 127.0.0.1:" in text and "start redis-server" in text


def test_redis_password_never_printed(tmp_path, node):
    node["dedup"] = {"backend": "redis",
                     "redis_url": dead_endpoint().replace("http://", "redis://:s3cret@")}
    code, output = doctor(tmp_path, node)
    assert code == 1 and line(output, "redis").startswith("FAIL")
    assert "s3cret" not in output


def test_spark_without_java_fails(tmp_path, node):
    node["reduce"] = {"executor": "spark"}
    code, output = doctor(tmp_path, node, env={"PATH": str(tmp_path), "JAVA_HOME": ""})
    assert code == 1
    assert "no java found" in line(output, "spark") and "openjdk" in output
