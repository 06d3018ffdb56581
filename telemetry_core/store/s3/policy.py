"""The data access policy of the S3 archive: lifecycle rules, bucket policy, default encryption.

Pure builders (:func:`lifecycle_rules`, :func:`bucket_policy`,
:func:`default_encryption`) turn the ``retention`` and ``store.publish``
config into the JSON documents S3 takes; :func:`apply_lifecycle` merges the
rules into a bucket's existing lifecycle configuration (rules of other
owners are kept).  The built-in plugin adds ``telemetry policy show`` and
``telemetry policy apply``.  docs/operations/s3.md explains every statement.

Lifecycle filters can only select by key prefix, with no negation, yet data
keys and the reserved ``_invalid/``, ``_manifests/``, ``_ledger/`` areas
share the archive root.  A data key starts with its first dimension value,
which :func:`telemetry_core.schema.safe_component` guarantees starts with
one of :data:`DATA_FIRST_CHARACTERS` (never ``_``); so the data rule is one
rule per possible first character, whatever the schema's values are.
"""

from __future__ import annotations

import json
import re
import string
from typing import Any, Mapping

import click

from ...errors import ConfigError
from ...hookspecs import hookimpl
from ...commands import EXIT_FAILED, config_options, fail, load_engine

#: Characters a dimension value (hence a data key) can start with; reserved areas start with ``_``.
DATA_FIRST_CHARACTERS = string.ascii_letters + string.digits + ".+-"
RULE_ID_PREFIX = "telemetry-core"
POLICY_VERSION = "2012-10-17"
#: Transitions to these classes need objects at least 30 days old (an S3 rule).
THIRTY_DAY_CLASSES = frozenset({"STANDARD_IA", "ONEZONE_IA"})
_PRINCIPAL = re.compile(r"(\d{12}|arn:aws[a-z-]*:(iam|sts)::\d{12}:[A-Za-z0-9+=,.@_/:-]+)")


# --------------------------------------------------------------------------- lifecycle


def rule_id_prefix(prefix: str) -> str:
    """The ID prefix of the rules this tool owns for one archive prefix."""
    return f"{RULE_ID_PREFIX}:{prefix}:"


def lifecycle_rules(retention: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """The lifecycle rules for the archive at ``prefix`` from the ``retention`` section.

    * data (every key under ``prefix`` not starting with ``_``): transition to
      ``glacier_storage_class`` after ``glacier_after_days``, expiry after
      ``expire_after_days`` (either may be null);
    * ``_invalid/``: expiry after ``invalid_expire_after_days``;
    * the whole prefix: abort multipart uploads unfinished after
      ``abort_incomplete_uploads_days``.

    ``_manifests/`` and ``_ledger/`` get no rule: they are kept.
    """
    owner = rule_id_prefix(prefix)
    if len(owner) > 200:
        raise ConfigError("the key prefix is too long for lifecycle rule IDs (200 characters at most)",
                          key="store.publish.prefix")
    glacier, expire = retention.get("glacier_after_days"), retention.get("expire_after_days")
    storage_class = retention.get("glacier_storage_class") or "GLACIER"
    if glacier is not None and expire is not None and expire <= glacier:
        raise ConfigError(f"expire_after_days ({expire}) must be later than glacier_after_days ({glacier}); "
                          f"raise it or set glacier_after_days: null", key="retention.expire_after_days")
    if glacier is not None and storage_class in THIRTY_DAY_CLASSES and glacier < 30:
        raise ConfigError(f"S3 moves objects to {storage_class} only after 30 days or more; "
                          f"raise glacier_after_days", key="retention.glacier_after_days")
    rules: list[dict[str, Any]] = []
    if glacier is not None or expire is not None:
        for character in DATA_FIRST_CHARACTERS:
            rule: dict[str, Any] = {"ID": f"{owner}data:{character}", "Status": "Enabled",
                                    "Filter": {"Prefix": prefix + character}}
            if glacier is not None:
                rule["Transitions"] = [{"Days": glacier, "StorageClass": storage_class}]
            if expire is not None:
                rule["Expiration"] = {"Days": expire}
            rules.append(rule)
    invalid = retention.get("invalid_expire_after_days")
    if invalid is not None:
        rules.append({"ID": f"{owner}invalid", "Status": "Enabled", "Filter": {"Prefix": prefix + "_invalid/"},
                      "Expiration": {"Days": invalid}})
    abort = retention.get("abort_incomplete_uploads_days")
    if abort is not None:
        rules.append({"ID": f"{owner}abort-incomplete-uploads", "Status": "Enabled",
                      "Filter": {"Prefix": prefix}, "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": abort}})
    return rules


def merge_rules(existing: list[dict[str, Any]], ours: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """``existing`` without the rules we own for ``prefix``, then ``ours`` (other owners' rules stay)."""
    owner = rule_id_prefix(prefix)
    return [rule for rule in existing if not str(rule.get("ID", "")).startswith(owner)] + ours


def apply_lifecycle(client: Any, bucket: str, prefix: str, retention: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Put the merged lifecycle configuration on ``bucket``; returns the rules now in force."""
    from botocore.exceptions import ClientError

    try:
        existing = client.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
            raise
        existing = []
    rules = merge_rules(existing, lifecycle_rules(retention, prefix), prefix)
    if rules:
        client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
    elif existing:
        client.delete_bucket_lifecycle(Bucket=bucket)
    return rules


# --------------------------------------------------------------------------- bucket policy


def check_principals(principals: list[str], key: str) -> list[str]:
    """Each principal must be an account id or an IAM/STS ARN (wildcards are refused)."""
    for principal in principals:
        if not _PRINCIPAL.fullmatch(principal) or "*" in principal:
            raise ConfigError(f"{principal!r} is not an AWS account id or IAM ARN "
                              f"(e.g. arn:aws:iam::123456789012:role/telemetry-node)", key=key)
    return list(principals)


def bucket_policy(*, bucket: str, prefix: str, writers: list[str], readers: list[str],
                  encryption: str | None, kms_key_id: str | None = None) -> dict[str, Any]:
    """The bucket policy: nodes write-only, analysts read-only, TLS only, the configured encryption only.

    Statements (``Sid``), in order:

    * ``DenyInsecureTransport``: every request without TLS is refused, for everyone;
    * ``NodesWriteOnly``: writers may upload under the prefix (and abort or
      list the parts of their own unfinished uploads);
    * ``NodesListKeys``: writers may list keys under the prefix (names, sizes,
      ETags; not contents), so a node can tell an identical re-publish from a conflict;
    * ``NodesNeverReadOrDelete``: an explicit deny (wins over any grant in the
      nodes' own IAM policies) of reading, deleting, re-ACLing objects and of
      changing the bucket's lifecycle or policy;
    * ``AnalystsReadOnly`` / ``AnalystsListKeys``: readers may get and list
      objects under the prefix; ``AnalystsNeverWriteOrDelete`` denies them writes;
    * ``DenyOtherEncryption`` (when ``encryption`` is set): uploads that ask for
      another server-side encryption (or another KMS key) are refused.  Uploads
      that name none get the bucket's default encryption (``policy apply
      --default-encryption``); a deny on a *missing* header would refuse every
      multipart part, because UploadPart carries no encryption header.
    """
    writers = check_principals(writers, "store.publish.writer_principals")
    readers = check_principals(readers, "store.publish.reader_principals")
    both = sorted(set(writers) & set(readers))
    if both:
        raise ConfigError(f"{', '.join(both)} cannot be both a writer and a reader; nodes must not read",
                          key="store.publish.reader_principals")
    bucket_arn = f"arn:aws:s3:::{bucket}"
    objects = f"{bucket_arn}/{prefix}*"
    listing = {"StringLike": {"s3:prefix": [f"{prefix}*"]}} if prefix else None
    statements: list[dict[str, Any]] = [{
        "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [bucket_arn, f"{bucket_arn}/*"], "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }]
    if writers:
        statements += [
            {"Sid": "NodesWriteOnly", "Effect": "Allow", "Principal": {"AWS": writers},
             "Action": ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
             "Resource": objects},
            _with_condition({"Sid": "NodesListKeys", "Effect": "Allow", "Principal": {"AWS": writers},
                             "Action": "s3:ListBucket", "Resource": bucket_arn}, listing),
            {"Sid": "NodesNeverReadOrDelete", "Effect": "Deny", "Principal": {"AWS": writers},
             "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:DeleteObject", "s3:DeleteObjectVersion",
                        "s3:PutObjectAcl", "s3:PutObjectVersionAcl", "s3:PutLifecycleConfiguration",
                        "s3:PutBucketPolicy", "s3:DeleteBucketPolicy"],
             "Resource": [bucket_arn, f"{bucket_arn}/*"]},
        ]
    if readers:
        statements += [
            {"Sid": "AnalystsReadOnly", "Effect": "Allow", "Principal": {"AWS": readers},
             "Action": "s3:GetObject", "Resource": objects},
            _with_condition({"Sid": "AnalystsListKeys", "Effect": "Allow", "Principal": {"AWS": readers},
                             "Action": "s3:ListBucket", "Resource": bucket_arn}, listing),
            {"Sid": "AnalystsNeverWriteOrDelete", "Effect": "Deny", "Principal": {"AWS": readers},
             "Action": ["s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObjectAcl"],
             "Resource": f"{bucket_arn}/*"},
        ]
    if encryption:
        statements.append({
            "Sid": "DenyOtherEncryption", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
            "Resource": f"{bucket_arn}/*",
            "Condition": {"Null": {"s3:x-amz-server-side-encryption": "false"},
                          "StringNotEquals": {"s3:x-amz-server-side-encryption": encryption}}})
        if kms_key_id:
            statements.append({
                "Sid": "DenyOtherKmsKey", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
                "Resource": f"{bucket_arn}/*",
                "Condition": {"Null": {"s3:x-amz-server-side-encryption-aws-kms-key-id": "false"},
                              "StringNotEquals": {"s3:x-amz-server-side-encryption-aws-kms-key-id": kms_key_id}}})
    return {"Version": POLICY_VERSION, "Id": f"telemetry-core-{bucket}", "Statement": statements}


def _with_condition(statement: dict[str, Any], condition: dict[str, Any] | None) -> dict[str, Any]:
    if condition:
        statement["Condition"] = condition
    return statement


def default_encryption(encryption: str, kms_key_id: str | None) -> dict[str, Any]:
    """The bucket's default server-side encryption (what uploads naming none get)."""
    rule: dict[str, Any] = {"SSEAlgorithm": encryption}
    if kms_key_id:
        rule["KMSMasterKeyID"] = kms_key_id
    return {"Rules": [{"ApplyServerSideEncryptionByDefault": rule, "BucketKeyEnabled": encryption == "aws:kms"}]}


def policy_for_config(config: Any) -> dict[str, Any]:
    """:func:`bucket_policy` for the ``store.publish`` section of ``config``."""
    from .publisher import S3Settings

    settings = S3Settings.from_config(config)
    section = config.get("store.publish")
    return bucket_policy(bucket=settings.bucket, prefix=settings.prefix,
                         writers=section.get("writer_principals") or [],
                         readers=section.get("reader_principals") or [],
                         encryption=settings.encryption, kms_key_id=settings.kms_key_id)


# --------------------------------------------------------------------------- commands


@hookimpl
def telemetry_register_commands(cli: click.Group) -> None:

    @cli.group()
    def policy() -> None:
        """The S3 archive's data access policy: lifecycle, bucket policy, encryption."""

    @policy.command("show")
    @config_options
    @click.option("--lifecycle", is_flag=True, help="Print the lifecycle rules instead of the bucket policy.")
    def policy_show(config_path: str | None, overrides: tuple[str, ...], lifecycle: bool) -> None:
        """Print the bucket policy generated from store.publish (or the lifecycle rules from retention)."""
        engine = load_engine(config_path, overrides)
        try:
            if lifecycle:
                from .publisher import S3Settings

                prefix = S3Settings.from_config(engine.config).prefix
                document: Any = {"Rules": lifecycle_rules(engine.config["retention"], prefix)}
            else:
                document = policy_for_config(engine.config)
        except ConfigError as exc:
            fail(str(exc), 2)
        click.echo(json.dumps(document, indent=2))

    @policy.command("apply")
    @config_options
    @click.option("--bucket-policy", "with_policy", is_flag=True,
                  help="Also replace the bucket policy with the generated one (review it with policy show).")
    @click.option("--default-encryption", "with_encryption", is_flag=True,
                  help="Also set the bucket's default encryption to store.publish.encryption.")
    @click.option("--dry-run", is_flag=True, help="Print what would be applied; change nothing.")
    def policy_apply(config_path: str | None, overrides: tuple[str, ...], with_policy: bool,
                     with_encryption: bool, dry_run: bool) -> None:
        """Put the lifecycle rules (Glacier transition, expiry, _invalid/ expiry) on the bucket.

        Rules of other owners (IDs not starting with telemetry-core:<prefix>:) are kept.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        from .publisher import S3Settings, make_client

        engine = load_engine(config_path, overrides)
        try:
            settings = S3Settings.from_config(engine.config)
            retention = engine.config["retention"]
            rules = lifecycle_rules(retention, settings.prefix)
            document = policy_for_config(engine.config) if with_policy else None
            encryption = None
            if with_encryption:
                if not settings.encryption:
                    raise ConfigError("--default-encryption needs store.publish.encryption set",
                                      key="store.publish.encryption")
                encryption = default_encryption(settings.encryption, settings.kms_key_id)
        except ConfigError as exc:
            fail(str(exc), 2)
        if dry_run:
            click.echo(json.dumps({"Lifecycle": {"Rules": rules}, "BucketPolicy": document,
                                   "DefaultEncryption": encryption}, indent=2))
            return
        client = make_client(settings)
        try:
            in_force = apply_lifecycle(client, settings.bucket, settings.prefix, retention)
            if document is not None:
                client.put_bucket_policy(Bucket=settings.bucket, Policy=json.dumps(document))
            if encryption is not None:
                client.put_bucket_encryption(Bucket=settings.bucket, ServerSideEncryptionConfiguration=encryption)
        except (ClientError, BotoCoreError) as exc:
            fail(f"could not apply the policy to s3://{settings.bucket}: {' '.join(str(exc).split())}; "
                 f"check the endpoint and that the credentials may change the bucket's configuration", EXIT_FAILED)
        ours = sum(1 for rule in in_force if str(rule.get("ID", "")).startswith(rule_id_prefix(settings.prefix)))
        click.echo(f"applied {ours} lifecycle rules to s3://{settings.bucket}/{settings.prefix} "
                   f"({len(in_force) - ours} rules of others kept)"
                   + ("; bucket policy replaced" if document is not None else "")
                   + ("; default encryption set" if encryption is not None else ""))
