"""Built-in plugin: an S3 bucket (AWS or any S3 API server) as the publisher.

Selected by ``store.publish.backend: s3``.  A published file's key is
``<prefix><key>`` in the bucket, where ``<key>`` is its path relative to the
archive root, exactly as in the local archive.  Credentials come from
boto3's normal chain (environment, shared config/profile, instance or task
role), never from the telemetry config file.

How a publish is made safe (docs/operations/s3.md explains it for operators):

* **Every upload is a multipart upload** (one part for a file up to
  ``part_size_mb``), because only then can the publisher check what the
  server received before the object becomes visible: each part is sent with
  ``Content-MD5`` and ``x-amz-checksum-sha256`` (AWS rejects a part whose
  bytes do not match them), and the part's ETag (the server's MD5 of the
  bytes it stored) and SHA-256 checksum in the response are compared with the
  local ones; a mismatching part is sent again.
* **Never overwrite**: the key is looked up first (HEAD; with write-only
  credentials that may not read, a one-key listing), and the upload is
  completed with ``If-None-Match: *``, so a key written meanwhile by anyone
  is never replaced.  An existing key with the same bytes is an idempotent
  success; different bytes raise :class:`PublishConflict`.
* **Verified after upload**: the stored object's size, ETag (the MD5 of the
  part MD5s, ``-N``), SHA-256 (composite of the part SHA-256s, when the
  server reports it) and ``x-amz-meta-sha256`` must match the local file.
* **Retries, one policy**: each request is made at most ``retries + 1``
  times, by :meth:`S3Publisher._with_retries` (exponential back-off with
  jitter, counted and logged) on connection errors, timeouts, 5xx, throttling
  and integrity failures (a part whose ETag or checksum does not match is a
  failed attempt of that request).  botocore's own retries are off
  (``total_max_attempts: 1``), and a publish is not retried as a whole: when the
  completion is refused because the key exists now (412, or ``NoSuchUpload``
  after a completion whose answer was lost), the key is looked up again and
  judged like any existing key.  Then :class:`PublishError` is raised and the
  processor tries the file again on a later pass.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import re
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from greplin import scales

from ...errors import ConfigError
from ...hookspecs import hookimpl
from ...interfaces import PublishConflict, PublishedFile, PublishError, StoredObject
from ..local import check_key
from .digests import MIB, FileDigest, ObjectInfo, PartDigest, b64, digest_file, same_content

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

# boto3 and botocore (~0.1 s to import) are imported by _import_boto() when a
# publisher or client is made, not with this module: every command loads it.
boto3: Any = None
BotoConfig: Any = None
BotoCoreError: Any = None
ClientError: Any = None  # noqa: F811 - the runtime binding of the name typed above
BotoConnectionError: Any = None
HTTPClientError: Any = None
IncompleteReadError: Any = None
NoCredentialsError: Any = None


def _import_boto() -> None:
    """Bind boto3 and the botocore names this module uses (once)."""
    global boto3, BotoConfig, BotoCoreError, ClientError, BotoConnectionError  # noqa: PLW0603
    global HTTPClientError, IncompleteReadError, NoCredentialsError  # noqa: PLW0603
    if boto3 is not None:
        return
    import boto3 as boto3_module
    import botocore.config
    import botocore.exceptions as errors

    BotoConfig = botocore.config.Config
    BotoCoreError, ClientError, BotoConnectionError = errors.BotoCoreError, errors.ClientError, errors.ConnectionError
    HTTPClientError, IncompleteReadError = errors.HTTPClientError, errors.IncompleteReadError
    NoCredentialsError = errors.NoCredentialsError
    boto3 = boto3_module

log = logging.getLogger(__name__)

#: Metadata key (``x-amz-meta-sha256``) holding the hex SHA-256 of the whole object.
SHA256_METADATA = "sha256"
#: Largest part count S3 accepts in one multipart upload.
MAX_PARTS = 10_000
#: Error codes worth another attempt of the same request (besides 5xx and connection errors).
RETRYABLE_CODES = frozenset({
    "RequestTimeout", "RequestTimeoutException", "SlowDown", "Throttling", "InternalError", "ServiceUnavailable",
    "ConditionalRequestConflict", "BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "IncompleteBody",
})
#: Answers to a conditional write (``If-None-Match: *``) meaning the key exists now: look it up again.
KEY_NOW_EXISTS_CODES = frozenset({"PreconditionFailed", "NoSuchUpload"})
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
T = TypeVar("T")


class ChecksumMismatch(PublishError):
    """What the server received, or what a download returned, does not match the expected checksum
    (transient: the publish or the read is tried again)."""


class StoredObjectMismatch(PublishError):
    """A completed upload is not what was sent.  Not retried: the key now holds an object that
    is never overwritten automatically, so an operator must look at it."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class S3Settings:
    """Everything an :class:`S3Publisher` needs, usually read from ``store.publish``.

    ``prefix`` is normalized to ``""`` or a string ending in ``/``.
    ``part_size`` is in bytes; ``retries`` is how many times a failed request
    is made again; ``backoff`` is the first pause before that in seconds (it
    doubles, with jitter, up to ``max_backoff``); ``page_size`` is the
    ``MaxKeys`` of each listing request.
    """

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    part_size: int = 16 * MIB
    retries: int = 4
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    encryption: str | None = "AES256"
    kms_key_id: str | None = None
    backoff: float = 0.5
    max_backoff: float = 30.0
    page_size: int = 1000

    def __post_init__(self) -> None:
        if not _BUCKET_NAME.fullmatch(self.bucket or ""):
            raise ConfigError(f"{self.bucket!r} is not a valid S3 bucket name (3-63 of a-z 0-9 . -)",
                              key="store.publish.bucket")
        object.__setattr__(self, "prefix", normalize_prefix(self.prefix))
        if self.kms_key_id and self.encryption != "aws:kms":
            raise ConfigError("kms_key_id needs encryption: aws:kms; set both or neither",
                              key="store.publish.kms_key_id")
        if self.part_size < 1:
            raise ConfigError("part size must be positive", key="store.publish.part_size_mb")

    @classmethod
    def from_config(cls, config: Any) -> "S3Settings":
        """Build from a validated config's ``store.publish`` section; a missing bucket is a ConfigError."""
        section = config.get("store.publish") or {}
        if not section.get("bucket"):
            raise ConfigError("store.publish.backend is s3 but no bucket is set; add store.publish.bucket",
                              source=getattr(config, "source", None), key="store.publish.bucket")
        return cls(
            bucket=section["bucket"], prefix=section.get("prefix") or "",
            endpoint_url=section.get("endpoint_url"), region=section.get("region"),
            part_size=int(section.get("part_size_mb", 16) * MIB), retries=section.get("retries", 4),
            connect_timeout=section.get("connect_timeout", 10.0), read_timeout=section.get("read_timeout", 60.0),
            encryption=section.get("encryption", "AES256"), kms_key_id=section.get("kms_key_id"))

    @property
    def etag_is_md5(self) -> bool:
        """Whether the server's ETags are MD5 digests (not for SSE-KMS objects on AWS)."""
        return self.encryption != "aws:kms"


def normalize_prefix(prefix: str) -> str:
    """``""`` or a key prefix ending in ``/``; refuses prefixes that are not clean key paths."""
    if not prefix:
        return ""
    if prefix.startswith("/") or "//" in prefix or "\\" in prefix or "\0" in prefix or any(
            part in (".", "..") for part in prefix.strip("/").split("/")):
        raise ConfigError(f"{prefix!r} is not a usable key prefix (no leading /, no empty, . or .. parts)",
                          key="store.publish.prefix")
    return prefix if prefix.endswith("/") else prefix + "/"


def make_client(settings: S3Settings) -> Any:
    """A boto3 S3 client for ``settings``: the configured timeouts, path-style addressing when an
    endpoint is given (MinIO, moto, other S3 API servers), and no retries of botocore's own: the
    publisher retries each request itself (``settings.retries``), so attempts never multiply."""
    _import_boto()
    config = BotoConfig(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
        s3={"addressing_style": "path" if settings.endpoint_url else "auto"},
        user_agent_extra="telemetry-core")
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config)


# --------------------------------------------------------------------------- keys


def check_s3_key(key: str, prefix: str = "") -> str:
    """Refuse keys that are unsafe as local paths (:func:`check_key`) or that S3 would keep apart
    from the same local path (``a//b``, ``a/./b``); also control characters, which S3 listings
    (XML 1.0) cannot return, and keys longer than S3's 1024 bytes."""
    check_key(key)
    if any(part in ("", ".", "..") for part in key.split("/")) or any(ord(c) < 0x20 or c == "\x7f" for c in key):
        raise PublishError(f"refusing to publish to unsafe key {key!r}")
    if len((prefix + key).encode("utf-8")) > 1024:
        raise PublishError(f"key {key!r} is longer than S3's 1024 bytes with the prefix {prefix!r}")
    return key


# --------------------------------------------------------------------------- the publisher


class S3Publisher:
    """Publishes files to ``s3://<bucket>/<prefix>``; see the module docstring for the guarantees.

    Implements :class:`telemetry_core.interfaces.Publisher`.  The boto3
    client is thread-safe, so one publisher may serve several threads.
    ``sleep`` is the pause function of the retry loop (tests pass a fast one).
    """

    def __init__(self, settings: S3Settings, client: Any | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        _import_boto()
        self.settings = settings
        self.client = client if client is not None else make_client(settings)
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.uri = f"s3://{settings.bucket}/{settings.prefix}"
        self._sleep = sleep
        self.stats = scales.collection(
            "/publish_s3", scales.IntStat("published"), scales.IntStat("already_published"),
            scales.IntStat("conflicts"), scales.IntStat("retries"), scales.IntStat("part_mismatches"),
            scales.IntStat("bytes_uploaded"), scales.IntStat("failures"))

    # ------------------------------------------------------------------ publishing

    def publish(self, local_path: str, key: str, *, checksum: str) -> PublishedFile:
        """Upload ``local_path`` to ``key`` unless the key already holds the same bytes.

        Returns only once the stored object is verified to hold ``checksum``;
        raises :class:`PublishConflict` if the key holds other bytes and
        :class:`PublishError` when storage stays unreachable or wrong after
        the retries.  Never overwrites; never deletes the local file.
        """
        full_key = self._full_key(key)
        digest = digest_file(local_path, self.settings.part_size)
        if digest.checksum != checksum:
            raise PublishError(f"{local_path} has {digest.checksum}, not the {checksum} it was published "
                               f"with; it changed after it was written, so it is not published")
        if len(digest.parts) > MAX_PARTS:
            raise PublishError(f"{local_path} needs {len(digest.parts)} parts of {self.settings.part_size} bytes; "
                               f"S3 allows {MAX_PARTS}: raise store.publish.part_size_mb")
        url = f"s3://{self.bucket}/{full_key}"
        existing = self._lookup(full_key)
        if existing is None:
            if self._upload(local_path, full_key, digest):
                self._verify_stored(full_key, digest)
                self.stats.published += 1
                self.stats.bytes_uploaded += digest.size
                log.info("published %s (%d bytes, %s)", url, digest.size, checksum)
                return PublishedFile(key=key, size=digest.size, checksum=checksum, url=url)
            existing = self._lookup(full_key)
            if existing is None:
                self.stats.failures += 1
                raise PublishError(f"the upload of {url} was refused at completion but the key is absent; "
                                   f"nothing local was deleted, retry later")
        self._check_existing(existing, full_key, digest)
        self.stats.already_published += 1
        log.info("%s was already published with the same bytes", url)
        return PublishedFile(key=key, size=digest.size, checksum=checksum, url=url)

    def _lookup(self, full_key: str) -> ObjectInfo | None:
        return self._with_retries(f"looking up s3://{self.bucket}/{full_key}", lambda: self._stat(full_key))

    def _upload(self, local_path: str, full_key: str, digest: FileDigest) -> bool:
        """One multipart upload, completed only with verified parts and ``If-None-Match: *``
        (an empty file, which has nothing to corrupt, is one conditional PutObject).

        Returns False when the write was refused because the key exists now: someone else
        wrote it, or an earlier attempt of the completion went through and its answer was lost.
        """
        url = f"s3://{self.bucket}/{full_key}"
        if digest.size == 0:
            return self._with_retries(f"uploading {url}", lambda: _unless_key_exists(lambda: self.client.put_object(
                Bucket=self.bucket, Key=full_key, Body=b"", IfNoneMatch="*", ContentMD5=b64(hashlib.md5().digest()),
                ChecksumAlgorithm="SHA256", ChecksumSHA256=digest.sha256_b64,
                Metadata={SHA256_METADATA: digest.sha256}, ContentType="application/octet-stream",
                **self._encryption_args()))) is not None
        created = self._with_retries(f"starting the upload of {url}", lambda: self.client.create_multipart_upload(
            Bucket=self.bucket, Key=full_key, ChecksumAlgorithm="SHA256",
            Metadata={SHA256_METADATA: digest.sha256}, ContentType="application/octet-stream",
            **self._encryption_args()))
        upload_id = created["UploadId"]
        completed = False
        try:
            parts = []
            with open(local_path, "rb") as handle:
                for number, part in enumerate(digest.parts, start=1):
                    handle.seek(part.offset)
                    body = handle.read(part.length)
                    if len(body) != part.length or hashlib.md5(body).digest() != part.md5:
                        raise PublishError(f"{local_path} changed while it was being published; not published")
                    parts.append(self._upload_part(full_key, upload_id, number, body, part))
            response = self._with_retries(f"completing the upload of {url}", lambda: _unless_key_exists(
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full_key, UploadId=upload_id, IfNoneMatch="*",
                    MultipartUpload={"Parts": parts})))
            completed = True
        finally:
            if not completed:
                self._abort(full_key, upload_id)
        if response is None:
            self._abort(full_key, upload_id)  # refused: the upload may still be open (gone after NoSuchUpload)
            return False
        etag = (response.get("ETag") or "").strip('"')
        if self.settings.etag_is_md5 and etag and etag != digest.multipart_etag():
            raise StoredObjectMismatch(f"s3://{self.bucket}/{full_key} was stored with ETag {etag}, expected "
                                       f"{digest.multipart_etag()}; it was not overwritten: inspect it before "
                                       f"deleting it by hand")
        return True

    def _upload_part(self, full_key: str, upload_id: str, number: int, body: bytes,
                     part: PartDigest) -> dict[str, Any]:
        """Upload one part; a part whose ETag/checksum in the answer do not match ours is a failed
        attempt of the request (:class:`ChecksumMismatch`), sent again like any other."""
        sha_b64, md5_hex = b64(part.sha256), part.md5.hex()
        url = f"s3://{self.bucket}/{full_key}"

        def send() -> dict[str, Any]:
            response = self.client.upload_part(
                Bucket=self.bucket, Key=full_key, UploadId=upload_id, PartNumber=number, Body=body,
                ContentMD5=b64(part.md5), ChecksumAlgorithm="SHA256", ChecksumSHA256=sha_b64)
            etag = response["ETag"].strip('"')
            stored_sha = response.get("ChecksumSHA256")
            problems = []
            if stored_sha and stored_sha != sha_b64:
                problems.append(f"SHA-256 {stored_sha} instead of {sha_b64}")
            if self.settings.etag_is_md5 and etag != md5_hex:
                problems.append(f"MD5 {etag} instead of {md5_hex}")
            if problems:
                self.stats.part_mismatches += 1
                raise ChecksumMismatch(f"part {number} of {url} arrived corrupted ({', '.join(problems)})")
            return {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": sha_b64}

        return self._with_retries(f"uploading part {number} of {url}", send)

    def _abort(self, full_key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, ClientError) and _code(exc) == "NoSuchUpload":
                return  # completed after all (its answer was lost), or already aborted
            # the lifecycle rule AbortIncompleteMultipartUpload cleans up what this misses
            log.warning("could not abort the unfinished upload of s3://%s/%s: %s", self.bucket, full_key, exc)

    def _verify_stored(self, full_key: str, digest: FileDigest) -> None:
        info = self._lookup(full_key)
        if info is None:
            raise PublishError(f"s3://{self.bucket}/{full_key} is missing right after its upload completed")
        verdict = same_content(info, digest, etag_is_md5=self.settings.etag_is_md5)
        if verdict is False:
            raise StoredObjectMismatch(f"s3://{self.bucket}/{full_key} does not hold the uploaded bytes "
                                       f"(size {info.size}, ETag {info.etag}); it was not overwritten: inspect it")

    def _check_existing(self, info: ObjectInfo, full_key: str, digest: FileDigest) -> None:
        verdict = same_content(info, digest, etag_is_md5=self.settings.etag_is_md5)
        if verdict is None and info.readable:
            verdict = self._hash_object(full_key) == digest.sha256
        if verdict:
            return
        self.stats.conflicts += 1
        if verdict is None:
            raise PublishConflict(f"s3://{self.bucket}/{full_key} already exists and these credentials cannot "
                                  f"show it holds {digest.checksum}; nothing was overwritten: compare it by hand")
        raise PublishConflict(f"s3://{self.bucket}/{full_key} already exists with different content "
                              f"(size {info.size}, ETag {info.etag}; publishing {digest.checksum}); "
                              f"nothing was overwritten")

    def _hash_object(self, full_key: str) -> str:
        digest = hashlib.sha256()
        with self._open_full(full_key, verify=False) as stream:
            while chunk := stream.read(MIB):
                digest.update(chunk)
        return digest.hexdigest()

    def _encryption_args(self) -> dict[str, str]:
        args: dict[str, str] = {}
        if self.settings.encryption:
            args["ServerSideEncryption"] = self.settings.encryption
        if self.settings.kms_key_id:
            args["SSEKMSKeyId"] = self.settings.kms_key_id
        return args

    # ------------------------------------------------------------------ reading

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored (HEAD, or a one-key listing for write-only credentials)."""
        return self._lookup(self._full_key(key)) is not None

    def open(self, key: str) -> IO[bytes]:
        """Stream the object's bytes (nothing is downloaded up front).

        A connection that breaks mid-object is resumed with a ranged GET of
        the same ETag; when the stream is read to its end, its SHA-256 is
        compared with ``x-amz-meta-sha256`` and :class:`ChecksumMismatch` is
        raised on a difference.  A missing key raises ``FileNotFoundError``.
        """
        return self._open_full(self._full_key(key), verify=True)

    def _open_full(self, full_key: str, *, verify: bool) -> IO[bytes]:
        url = f"s3://{self.bucket}/{full_key}"
        response = self._with_retries(f"opening {url}", lambda: self._get(full_key, 0, None))
        etag = response.get("ETag")

        def reopen(position: int, attempt: int) -> Any:
            self._sleep(self._backoff(attempt))
            return self._with_retries(f"resuming {url}", lambda: self._get(full_key, position, etag))["Body"]

        stream = ObjectStream(url, response["Body"], size=int(response.get("ContentLength") or 0),
                              expected_sha256=(response.get("Metadata") or {}).get(SHA256_METADATA) if verify else None,
                              reopen=reopen, retries=self.settings.retries)
        return io.BufferedReader(stream, buffer_size=MIB)

    def _get(self, full_key: str, start: int, etag: str | None) -> dict[str, Any]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": full_key}
        if start:
            args["Range"] = f"bytes={start}-"
        if etag:
            args["IfMatch"] = etag
        try:
            return self.client.get_object(**args)
        except ClientError as exc:
            if _status(exc) == 404 or _code(exc) in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"s3://{self.bucket}/{full_key} does not exist") from None
            raise

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Every object whose key starts with ``prefix``, in key order, a page at a time."""
        for page in self._pages(prefix):
            for item in page.get("Contents", ()):
                modified = item.get("LastModified")
                yield StoredObject(item["Key"][len(self.prefix):], item["Size"],
                                   modified.timestamp() if modified is not None else None)

    def list_dirs(self, prefix: str) -> Iterator[str]:
        """The "directories" one level below ``prefix`` (``""`` or ending in ``/``), each ending in ``/``;
        the server groups keys by ``Delimiter="/"``, so nothing below them is listed."""
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"list_dirs needs a prefix ending in '/', got {prefix!r}")
        for page in self._pages(prefix, Delimiter="/"):
            for item in page.get("CommonPrefixes", ()):
                yield item["Prefix"][len(self.prefix):]

    def _pages(self, prefix: str, **args: str) -> Iterator[dict[str, Any]]:
        """ListObjectsV2 pages under ``prefix``, each request retried like any other."""
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix,
                                   "MaxKeys": self.settings.page_size, **args}
        while True:
            page = self._with_retries(f"listing {self.uri}{prefix}", lambda: self.client.list_objects_v2(**request))
            yield page
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = page["NextContinuationToken"]

    # ------------------------------------------------------------------ internals

    def _full_key(self, key: str) -> str:
        return self.prefix + check_s3_key(key, self.prefix)

    def _stat(self, full_key: str) -> ObjectInfo | None:
        """HEAD the key; when reading is forbidden (write-only credentials), fall back to a listing."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full_key, ChecksumMode="ENABLED")
        except ClientError as exc:
            status = _status(exc)
            if status == 404:
                return None
            if status == 403:
                return self._stat_by_listing(full_key)
            raise
        return ObjectInfo(size=head["ContentLength"], etag=head.get("ETag", "").strip('"'),
                          sha256=(head.get("Metadata") or {}).get(SHA256_METADATA),
                          checksum_sha256=head.get("ChecksumSHA256"), checksum_type=head.get("ChecksumType"))

    def _stat_by_listing(self, full_key: str) -> ObjectInfo | None:
        try:
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=full_key, MaxKeys=1)
        except ClientError as exc:
            if _status(exc) == 403:
                raise PublishError(f"cannot tell whether s3://{self.bucket}/{full_key} exists: the credentials "
                                   f"may neither read (s3:GetObject) nor list (s3:ListBucket) it; grant "
                                   f"s3:ListBucket on the prefix (see telemetry policy show)") from None
            raise
        for item in page.get("Contents", ()):
            if item["Key"] == full_key:
                return ObjectInfo(size=item["Size"], etag=item.get("ETag", "").strip('"'), readable=False)
        return None

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.settings.max_backoff, self.settings.backoff * (2 ** attempt))
        return ceiling * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not cryptography

    def _with_retries(self, what: str, action: Callable[[], T]) -> T:
        """Make one request (``action``), again on a transient failure, ``retries + 1`` times in all,
        with back-off; then raise :class:`PublishError`.  The only retry loop of the publisher."""
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            try:
                return action()
            except PublishConflict:
                raise
            except (ClientError, BotoCoreError, ChecksumMismatch) as exc:
                if isinstance(exc, NoCredentialsError):
                    raise PublishError(f"{what} failed: no AWS credentials found; set AWS_ACCESS_KEY_ID/"
                                       f"AWS_SECRET_ACCESS_KEY, AWS_PROFILE or use an instance role") from exc
                if not _retryable(exc):
                    self.stats.failures += 1
                    raise PublishError(f"{what} failed: {_describe(exc)}") from exc
                if attempt + 1 == attempts:
                    self.stats.failures += 1
                    raise PublishError(f"{what} failed after {attempts} attempts: {_describe(exc)}; "
                                       f"nothing local was deleted, retry later") from exc
                self.stats.retries += 1
                delay = self._backoff(attempt)
                log.warning("%s failed (%s); attempt %d of %d in %.2fs", what, _describe(exc), attempt + 2,
                            attempts, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")


class ObjectStream(io.RawIOBase):
    """The bytes of one object, streamed; resumes broken connections, verifies at the end.

    ``reopen(position, attempt)`` returns a new body from ``position`` (the
    publisher uses a ranged GET pinned to the object's ETag, so two different
    objects are never spliced), at most ``retries`` times.  At end of stream
    the SHA-256 of everything read is compared with ``expected_sha256`` (hex)
    when it is known, and :class:`ChecksumMismatch` is raised on a difference.
    """

    def __init__(self, url: str, body: Any, *, size: int, expected_sha256: str | None,
                 reopen: Callable[[int, int], Any], retries: int) -> None:
        super().__init__()
        self._url = url
        self._body = body
        self._size = size
        self._expected = expected_sha256.lower() if expected_sha256 else None
        self._reopen = reopen
        self._retries = retries
        self._digest = hashlib.sha256()
        self._position = 0
        self._resumes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            try:
                chunk = self._body.read(len(buffer))
            except (HTTPClientError, BotoConnectionError, IncompleteReadError, OSError) as exc:
                self._resume(exc)
                continue
            if not chunk and self._position < self._size:
                self._resume(EOFError(f"the stream ended after {self._position} of {self._size} bytes"))
                continue
            break
        if not chunk:
            self._verify()
            return 0
        buffer[: len(chunk)] = chunk
        self._digest.update(chunk)
        self._position += len(chunk)
        return len(chunk)

    def _resume(self, exc: BaseException) -> None:
        if self._resumes >= self._retries:
            raise PublishError(f"reading {self._url} failed at byte {self._position}: {exc}") from exc
        log.warning("reading %s broke at byte %d (%s); resuming", self._url, self._position, exc)
        self._body.close()
        self._body = self._reopen(self._position, self._resumes)
        self._resumes += 1

    def _verify(self) -> None:
        if self._expected is None:
            return
        found = self._digest.hexdigest()
        if found != self._expected:
            raise ChecksumMismatch(f"{self._url} read back as sha256:{found}, stored as sha256:{self._expected}; "
                                   f"the download was corrupted: read it again")
        self._expected = None  # verified once; later reads at EOF return b"" quietly

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, ChecksumMismatch):
        return True
    if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError)):
        return True
    if isinstance(exc, ClientError):
        return _status(exc) >= 500 or _code(exc) in RETRYABLE_CODES
    return False


def _unless_key_exists(write: Callable[[], T]) -> T | None:
    """``write()``, or None when S3 refuses a conditional write because the key exists now."""
    try:
        return write()
    except ClientError as exc:
        if _status(exc) == 412 or _code(exc) in KEY_NOW_EXISTS_CODES:
            return None
        raise


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        text = f"{error.get('Code', '?')} (HTTP {_status(exc)}) in {exc.operation_name}"
        if _code(exc) in ("AccessDenied", "403"):
            text += ": check the credentials and the bucket policy (telemetry policy show)"
        elif _code(exc) == "NoSuchBucket":
            text += ": the bucket does not exist; create it or fix store.publish.bucket"
        return text
    return " ".join(str(exc).split())


# --------------------------------------------------------------------------- plugin


class S3Plugin:
    """The built-in ``store.s3`` plugin: one publisher (one boto3 client) per engine."""

    def __init__(self) -> None:
        self.publisher: S3Publisher | None = None

    @hookimpl
    def telemetry_config_choices(self, key: str) -> list[str] | None:
        return ["s3"] if key == "store.publish.backend" else None

    @hookimpl(trylast=True)
    def telemetry_store_publisher(self, engine: Any) -> S3Publisher | None:
        """The S3 publisher when ``store.publish.backend`` is ``s3``."""
        if engine.config.get("store.publish.backend") != "s3":
            return None
        if self.publisher is None:
            self.publisher = S3Publisher(S3Settings.from_config(engine.config))
        return self.publisher
