"""Secrets stay secret: a sentinel credential in store.publish.endpoint_url and in reduce.spark.conf
appears in nothing the node prints, logs or writes (config show/check, doctor, run, reconcile, metrics,
state files)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from edge_fixtures import DIMS, TELEMETRY, free_port, new_id, post

from telemetry_core.redaction import REDACTED, redact, redact_mapping, secret_name

SENTINEL = "SENTINELxSECRET"


def test_redact_hides_url_user_info_and_secret_query_values():
    text = f'Could not connect to the endpoint URL: "http://AKIA:{SENTINEL}@minio:9000/b?list-type=2"'
    assert redact(text) == 'Could not connect to the endpoint URL: "http://***@minio:9000/b?list-type=2"'
    assert redact(f"https://u@h/x?X-Amz-Signature={SENTINEL}&a=1") == "https://***@h/x?X-Amz-Signature=***&a=1"
    assert redact(ValueError(f"redis://:{SENTINEL}@redis:6379/0")) == "redis://***@redis:6379/0"
    assert redact("http://host/path and no credentials") == "http://host/path and no credentials"
    assert redact(3) == 3 and redact(None) is None


def test_redact_mapping_hides_secret_looking_keys():
    conf = {"spark.hadoop.fs.s3a.secret.key": SENTINEL, "spark.hadoop.fs.s3a.access.key": SENTINEL,
            "spark.ssl.keyPassword": SENTINEL, "api_token": SENTINEL, "spark.executor.memory": "4g",
            "store": {"kms_key_id": "arn:aws:kms:x", "endpoint_url": f"http://k:{SENTINEL}@h"}}
    shown = redact_mapping(conf)
    assert SENTINEL not in json.dumps(shown)
    assert shown["spark.executor.memory"] == "4g" and shown["store"]["kms_key_id"] == "arn:aws:kms:x"
    assert shown["spark.hadoop.fs.s3a.secret.key"] == REDACTED and shown["store"]["endpoint_url"] == "http://***@h"
    assert not secret_name("max_key_length") and secret_name("fs.s3a.session.token")


def run(args: list[str], config: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TELEMETRY, *args, "--config", str(config)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_a_sentinel_secret_appears_in_no_output_log_or_file(tmp_path):
    data_dir = tmp_path / "data"
    port, closed = free_port(), free_port()
    config = tmp_path / "node.yaml"
    config.write_text(
        f"node_id: secrets\ndata_dir: {data_dir}\n"
        f"receive:\n  host: 127.0.0.1\n  port: {port}\n  workers: 1\n  metrics_interval_s: 0.2\n"
        f"  spool:\n    max_file_age_s: 0.5\n"
        f"store:\n  publish:\n    backend: s3\n    bucket: telemetry-bucket\n"
        f"    endpoint_url: http://AKIAEXAMPLE:{SENTINEL}@127.0.0.1:{closed}\n    retries: 0\n"
        f"process:\n  poll_interval: 0.05\n  max_attempts: 2\n"
        f"reduce:\n  spark:\n    conf:\n      spark.hadoop.fs.s3a.secret.key: {SENTINEL}\n"
        f"      spark.hadoop.fs.s3a.access.key: {SENTINEL}\n      spark.executor.memory: 4g\n"
        f"convert:\n  histograms:\n    server: null\n    cache_dir: {tmp_path / 'hc'}\n")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-the-sentinel",
           "AWS_EC2_METADATA_DISABLED": "true"}
    outputs: dict[str, str] = {}

    shown = run(["config", "show"], config, env)
    assert shown.returncode == 0, shown.stderr
    assert f"http://***@127.0.0.1:{closed}" in shown.stdout and "spark.executor.memory: 4g" in shown.stdout
    outputs["config show"] = shown.stdout + shown.stderr
    checked = run(["config", "check"], config, env)
    assert checked.returncode == 0, checked.stderr
    assert "warning: store.publish.endpoint_url holds credentials in its URL" in checked.stderr
    outputs["config check"] = checked.stdout + checked.stderr
    doctor = run(["doctor"], config, env)
    assert "127.0.0.1" in doctor.stdout, doctor.stdout  # the S3 check ran and named the endpoint
    outputs["doctor"] = doctor.stdout + doctor.stderr

    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        node = subprocess.Popen([TELEMETRY, "run", "--config", str(config)], stdout=log, stderr=log, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "edge listening on" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(3):
            assert post(port, f"/submit/telemetry/{new_id()}/{DIMS}", b'{"ver": 1}').status == 200
        deadline = time.monotonic() + 60  # the spool file is finished, processed, and its publish fails
        while time.monotonic() < deadline:
            errors = [json.loads(p.read_text()).get("last_error") for p in (data_dir / "work").glob("*/state.json")]
            if any(errors) and "publish" in log_path.read_text().lower():
                break
            time.sleep(0.2)
        assert any(errors), log_path.read_text()[-3000:]
        assert f"127.0.0.1:{closed}" in " ".join(errors)  # the error names the endpoint, without credentials
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=90)
    outputs["run log"] = log_path.read_text()

    reconcile = run(["reconcile"], config, env)
    assert reconcile.returncode != 0
    outputs["reconcile"] = reconcile.stdout + reconcile.stderr
    metrics = run(["metrics", "--format", "prometheus"], config, env)
    outputs["metrics"] = metrics.stdout + metrics.stderr

    leaks = [name for name, text in outputs.items() if SENTINEL in text]
    for path in data_dir.rglob("*"):
        if path.is_file() and SENTINEL.encode() in path.read_bytes():
            leaks.append(str(path.relative_to(data_dir)))
    assert leaks == [], {name: outputs.get(name, "")[:2000] for name in leaks}
