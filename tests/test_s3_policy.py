"""The S3 data access policy: lifecycle rules and bucket policy, round-tripped through the S3 server."""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from s3_helpers import bucket, fake_aws_credentials, moto_endpoint, s3_client  # noqa: F401
from telemetry_core.config.loader import read_config, validate
from telemetry_core.errors import ConfigError
from telemetry_core.store.s3.policy import (DATA_FIRST_CHARACTERS, bucket_policy, default_encryption, lifecycle_rules,
                                      merge_rules)
from telemetry_core.schema import safe_component

WRITER = "arn:aws:iam::123456789012:role/telemetry-node"
READER = "arn:aws:iam::123456789012:user/analyst"
RETENTION = {"glacier_after_days": 30, "glacier_storage_class": "GLACIER", "expire_after_days": 365,
             "invalid_expire_after_days": 14, "abort_incomplete_uploads_days": 3}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "telemetry"), *args], capture_output=True, text=True,
                          timeout=60, env=os.environ.copy())


def write_config(tmp_path: Path, endpoint: str, bucket_name: str, **retention) -> Path:
    path = tmp_path / "plugins.yaml"
    path.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"), "node_id": "n1",
        "store": {"publish": {"backend": "s3", "bucket": bucket_name, "prefix": "telemetry/v2",
                              "endpoint_url": endpoint, "writer_principals": [WRITER],
                              "reader_principals": [READER]}},
        "retention": {**RETENTION, **retention}}))
    return path


# --------------------------------------------------------------------------- lifecycle


def test_data_keys_always_start_with_a_character_the_data_rules_cover():
    rng = random.Random(7)
    alphabet = string.printable + "_äß€/\\"
    samples = ["_x", "__", "", ".", "..", "-", "OTHER", "UNKNOWN", "/etc", "\x00", "ünï"]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(2000)]
    for value in samples:
        assert safe_component(value)[0] in DATA_FIRST_CHARACTERS, value
    assert "_" not in DATA_FIRST_CHARACTERS


def test_lifecycle_rules_cover_data_and_invalid_but_not_manifests_or_ledger():
    rules = lifecycle_rules(RETENTION, "tel/")
    data = [r for r in rules if ":data:" in r["ID"]]
    assert {r["Filter"]["Prefix"] for r in data} == {f"tel/{c}" for c in DATA_FIRST_CHARACTERS}
    for rule in data:
        assert rule["Transitions"] == [{"Days": 30, "StorageClass": "GLACIER"}]
        assert rule["Expiration"] == {"Days": 365} and rule["Status"] == "Enabled"
    invalid = [r for r in rules if r["ID"].endswith(":invalid")]
    assert invalid == [{"ID": "telemetry-core:tel/:invalid", "Status": "Enabled",
                        "Filter": {"Prefix": "tel/_invalid/"}, "Expiration": {"Days": 14}}]
    abort = [r for r in rules if "AbortIncompleteMultipartUpload" in r]
    assert abort[0]["Filter"] == {"Prefix": "tel/"} and abort[0]["AbortIncompleteMultipartUpload"] == {
        "DaysAfterInitiation": 3}
    for key in ("tel/_manifests/n1/7.json", "tel/_ledger/x"):
        expiring = [r["ID"] for r in rules if key.startswith(r["Filter"]["Prefix"])
                    and ("Expiration" in r or "Transitions" in r)]
        assert expiring == [], key
    assert len({r["ID"] for r in rules}) == len(rules)


def test_lifecycle_rules_follow_the_nulls():
    rules = lifecycle_rules({"glacier_after_days": None, "expire_after_days": 100,
                             "invalid_expire_after_days": None, "abort_incomplete_uploads_days": None}, "")
    assert len(rules) == len(DATA_FIRST_CHARACTERS)
    assert all("Transitions" not in r and r["Expiration"] == {"Days": 100} for r in rules)
    assert lifecycle_rules({"glacier_after_days": None, "expire_after_days": None,
                            "invalid_expire_after_days": None, "abort_incomplete_uploads_days": None}, "") == []


def test_lifecycle_rules_refuse_contradictions():
    with pytest.raises(ConfigError, match="later than glacier_after_days"):
        lifecycle_rules({**RETENTION, "expire_after_days": 30}, "")
    with pytest.raises(ConfigError, match="30 days"):
        lifecycle_rules({**RETENTION, "glacier_storage_class": "STANDARD_IA", "glacier_after_days": 7}, "")


def test_merge_keeps_rules_of_other_owners_and_other_prefixes():
    foreign = {"ID": "logs-expiry", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 5}}
    other_prefix = {"ID": "telemetry-core:other/:invalid", "Status": "Enabled",
                    "Filter": {"Prefix": "other/_invalid/"}, "Expiration": {"Days": 5}}
    stale = {"ID": "telemetry-core:tel/:data:a", "Status": "Enabled", "Filter": {"Prefix": "tel/a"},
             "Expiration": {"Days": 1}}
    ours = lifecycle_rules(RETENTION, "tel/")
    merged = merge_rules([foreign, other_prefix, stale], ours, "tel/")
    assert merged == [foreign, other_prefix, *ours]


def test_policy_apply_round_trips_the_lifecycle_through_the_server(tmp_path, moto_endpoint, bucket, s3_client):
    s3_client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "someone-else", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 5}}]})
    config = write_config(tmp_path, moto_endpoint, bucket)

    result = run_cli("policy", "apply", "--config", str(config))
    again = run_cli("policy", "apply", "--config", str(config))

    assert result.returncode == 0, result.stderr
    expected = lifecycle_rules(RETENTION, "telemetry/v2/")
    assert f"applied {len(expected)} lifecycle rules to s3://{bucket}/telemetry/v2/ (1 rules of others kept)" \
        in result.stdout
    assert again.returncode == 0 and again.stdout == result.stdout
    stored = s3_client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    by_id = {rule["ID"]: rule for rule in stored}
    assert set(by_id) == {"someone-else", *(rule["ID"] for rule in expected)}
    for rule in expected:
        got = by_id[rule["ID"]]
        assert got["Status"] == "Enabled"
        assert got["Filter"].get("Prefix") == rule["Filter"]["Prefix"]
        for field in ("Transitions", "Expiration", "AbortIncompleteMultipartUpload"):
            assert _days(got.get(field)) == _days(rule.get(field)), (rule["ID"], field)


def _days(value):
    """Servers add defaults (e.g. ExpiredObjectDeleteMarker); compare what we set."""
    if isinstance(value, list):
        return [{k: v for k, v in item.items() if k in ("Days", "StorageClass")} for item in value]
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k in ("Days", "DaysAfterInitiation")}
    return value


def test_policy_apply_with_nothing_to_keep_removes_our_rules(tmp_path, moto_endpoint, bucket, s3_client):
    config = write_config(tmp_path, moto_endpoint, bucket)
    assert run_cli("policy", "apply", "--config", str(config)).returncode == 0
    nulls = ["--set", "retention.glacier_after_days=null", "--set", "retention.expire_after_days=null",
             "--set", "retention.invalid_expire_after_days=null", "--set", "retention.abort_incomplete_uploads_days=null"]
    result = run_cli("policy", "apply", "--config", str(config), *nulls)
    assert result.returncode == 0, result.stderr
    with pytest.raises(s3_client.exceptions.ClientError, match="NoSuchLifecycleConfiguration"):
        s3_client.get_bucket_lifecycle_configuration(Bucket=bucket)


def test_policy_apply_dry_run_changes_nothing(tmp_path, moto_endpoint, bucket, s3_client):
    config = write_config(tmp_path, moto_endpoint, bucket)
    result = run_cli("policy", "apply", "--config", str(config), "--dry-run", "--bucket-policy",
                     "--default-encryption")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["Lifecycle"]["Rules"] == lifecycle_rules(RETENTION, "telemetry/v2/")
    assert printed["BucketPolicy"]["Statement"][0]["Sid"] == "DenyInsecureTransport"
    assert printed["DefaultEncryption"] == default_encryption("AES256", None)
    with pytest.raises(s3_client.exceptions.ClientError):
        s3_client.get_bucket_lifecycle_configuration(Bucket=bucket)


def test_policy_apply_reports_a_contradictory_config_in_one_line(tmp_path, moto_endpoint, bucket):
    config = write_config(tmp_path, moto_endpoint, bucket, expire_after_days=10)
    result = run_cli("policy", "apply", "--config", str(config))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "expire_after_days" in errors[0] and "Traceback" not in result.stderr


def test_policy_apply_against_an_unreachable_endpoint_fails_cleanly(tmp_path, bucket):
    from s3_helpers import dead_endpoint

    config = write_config(tmp_path, dead_endpoint(), bucket)
    result = run_cli("policy", "apply", "--config", str(config), "--set", "store.publish.retries=0")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: could not apply the policy")
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- bucket policy


def statements(policy):
    return {statement["Sid"]: statement for statement in policy["Statement"]}


def test_the_bucket_policy_is_write_only_for_nodes_and_read_only_for_analysts():
    policy = bucket_policy(bucket="tbucket", prefix="telemetry/", writers=[WRITER], readers=[READER],
                           encryption="AES256")
    by_sid = statements(policy)
    assert policy["Version"] == "2012-10-17"

    tls = by_sid["DenyInsecureTransport"]
    assert tls["Effect"] == "Deny" and tls["Principal"] == "*" and tls["Action"] == "s3:*"
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert set(tls["Resource"]) == {"arn:aws:s3:::tbucket", "arn:aws:s3:::tbucket/*"}

    allowed_to_nodes = [s for s in policy["Statement"] if s["Effect"] == "Allow"
                        and WRITER in s["Principal"]["AWS"]]
    node_actions = {a for s in allowed_to_nodes for a in ([s["Action"]] if isinstance(s["Action"], str)
                                                           else s["Action"])}
    assert "s3:PutObject" in node_actions
    assert not {a for a in node_actions if a.startswith(("s3:Get", "s3:Delete"))}
    assert by_sid["NodesWriteOnly"]["Resource"] == "arn:aws:s3:::tbucket/telemetry/*"
    assert by_sid["NodesListKeys"]["Condition"] == {"StringLike": {"s3:prefix": ["telemetry/*"]}}
    deny_nodes = by_sid["NodesNeverReadOrDelete"]
    assert deny_nodes["Effect"] == "Deny" and deny_nodes["Principal"] == {"AWS": [WRITER]}
    assert {"s3:GetObject", "s3:DeleteObject", "s3:DeleteObjectVersion"} <= set(deny_nodes["Action"])

    read = by_sid["AnalystsReadOnly"]
    assert read["Effect"] == "Allow" and read["Principal"] == {"AWS": [READER]}
    assert read["Action"] == "s3:GetObject" and read["Resource"] == "arn:aws:s3:::tbucket/telemetry/*"
    assert by_sid["AnalystsListKeys"]["Action"] == "s3:ListBucket"
    assert {"s3:PutObject", "s3:DeleteObject"} <= set(by_sid["AnalystsNeverWriteOrDelete"]["Action"])
    assert not any(READER in s.get("Principal", {}).get("AWS", []) and s["Effect"] == "Allow"
                   and "Put" in json.dumps(s["Action"]) for s in policy["Statement"] if isinstance(s["Principal"], dict))

    encryption = by_sid["DenyOtherEncryption"]
    assert encryption["Condition"] == {"Null": {"s3:x-amz-server-side-encryption": "false"},
                                       "StringNotEquals": {"s3:x-amz-server-side-encryption": "AES256"}}


def test_the_bucket_policy_without_principals_or_encryption_only_enforces_tls():
    policy = bucket_policy(bucket="tbucket", prefix="", writers=[], readers=[], encryption=None)
    assert [s["Sid"] for s in policy["Statement"]] == ["DenyInsecureTransport"]


def test_kms_key_is_enforced_when_configured():
    key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    policy = bucket_policy(bucket="tbucket", prefix="", writers=[WRITER], readers=[], encryption="aws:kms",
                           kms_key_id=key)
    deny = statements(policy)["DenyOtherKmsKey"]
    assert deny["Condition"]["StringNotEquals"] == {"s3:x-amz-server-side-encryption-aws-kms-key-id": key}
    assert "Condition" not in statements(policy)["NodesListKeys"]  # no prefix: the whole bucket


@pytest.mark.parametrize("principal", ["*", "arn:aws:iam::*:root", "someone", "arn:aws:iam::12:role/x"])
def test_bad_principals_are_refused(principal):
    with pytest.raises(ConfigError, match="not an AWS account id or IAM ARN"):
        bucket_policy(bucket="tbucket", prefix="", writers=[principal], readers=[], encryption=None)


def test_a_principal_cannot_be_writer_and_reader():
    with pytest.raises(ConfigError, match="both a writer and a reader"):
        bucket_policy(bucket="tbucket", prefix="", writers=[WRITER], readers=[WRITER], encryption=None)


def test_policy_show_prints_a_policy_the_server_accepts(tmp_path, moto_endpoint, bucket, s3_client):
    config = write_config(tmp_path, moto_endpoint, bucket)
    result = run_cli("policy", "show", "--config", str(config))
    assert result.returncode == 0, result.stderr
    policy = json.loads(result.stdout)
    assert policy == bucket_policy(bucket=bucket, prefix="telemetry/v2/", writers=[WRITER], readers=[READER],
                                   encryption="AES256")

    s3_client.put_bucket_policy(Bucket=bucket, Policy=result.stdout)
    assert json.loads(s3_client.get_bucket_policy(Bucket=bucket)["Policy"]) == policy


def test_policy_show_lifecycle(tmp_path, moto_endpoint, bucket):
    config = write_config(tmp_path, moto_endpoint, bucket)
    result = run_cli("policy", "show", "--lifecycle", "--config", str(config))
    assert json.loads(result.stdout) == {"Rules": lifecycle_rules(RETENTION, "telemetry/v2/")}


def test_policy_show_without_a_bucket_says_what_to_do(tmp_path):
    result = run_cli("policy", "show", "--set", f"data_dir={tmp_path}")
    assert result.returncode == 2 and "store.publish.bucket" in result.stderr


def test_policy_apply_puts_the_bucket_policy_and_default_encryption(tmp_path, moto_endpoint, bucket, s3_client):
    config = write_config(tmp_path, moto_endpoint, bucket)
    result = run_cli("policy", "apply", "--config", str(config), "--bucket-policy", "--default-encryption")
    assert result.returncode == 0, result.stderr
    assert "bucket policy replaced; default encryption set" in result.stdout
    expected = bucket_policy(bucket=bucket, prefix="telemetry/v2/", writers=[WRITER], readers=[READER],
                             encryption="AES256")
    assert json.loads(s3_client.get_bucket_policy(Bucket=bucket)["Policy"]) == expected
    rule = s3_client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_config_keys_have_defaults_and_validate(tmp_path):
    config = validate(read_config(None, [f"data_dir={tmp_path}"]))
    assert config.get("retention.glacier_after_days") == 90
    assert config.get("store.publish.part_size_mb") == 16
    with pytest.raises(ConfigError, match="part_size_mb"):
        validate(read_config(None, ["store.publish.part_size_mb=1"]))
    with pytest.raises(ConfigError, match="encryption"):
        validate(read_config(None, ["store.publish.encryption=rot13"]))
