"""What S3 will say about a local file, and whether a stored object holds its bytes.

S3 reports a multipart object's ETag as the MD5 of its parts' MD5s followed by
``-<parts>``, and its SHA-256 checksum (when uploads send one) as the SHA-256
of its parts' SHA-256s; :func:`digest_file` computes both for a local file,
cut into the same parts, in one read.  :func:`same_content` compares what a
HEAD or a listing returned with them.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class PartDigest:
    """One part of a local file: where it is and its MD5 and SHA-256 (raw bytes)."""

    offset: int
    length: int
    md5: bytes
    sha256: bytes


@dataclass(frozen=True)
class FileDigest:
    """The digests of a local file as S3 will report them for a multipart upload."""

    size: int
    sha256: str
    md5: str
    parts: tuple[PartDigest, ...]

    @property
    def checksum(self) -> str:
        return f"sha256:{self.sha256}"

    @property
    def sha256_b64(self) -> str:
        return b64(bytes.fromhex(self.sha256))

    def multipart_etag(self) -> str:
        """The ETag S3 gives the object: MD5 of the concatenated part MD5s, ``-<parts>``."""
        return f"{hashlib.md5(b''.join(p.md5 for p in self.parts)).hexdigest()}-{len(self.parts)}"

    def composite_sha256(self) -> str:
        """The composite checksum S3 gives the object: SHA-256 of the part SHA-256s (base64)."""
        return b64(hashlib.sha256(b"".join(p.sha256 for p in self.parts)).digest())


def digest_file(path: str, part_size: int) -> FileDigest:
    """Read ``path`` once and compute whole-file and per-part digests for parts of ``part_size``."""
    whole_sha, whole_md5 = hashlib.sha256(), hashlib.md5()
    parts: list[PartDigest] = []
    offset = 0
    with open(path, "rb") as handle:
        while True:
            part_md5, part_sha, length = hashlib.md5(), hashlib.sha256(), 0
            while length < part_size:
                chunk = handle.read(min(MIB, part_size - length))
                if not chunk:
                    break
                for digest in (whole_sha, whole_md5, part_md5, part_sha):
                    digest.update(chunk)
                length += len(chunk)
            if length == 0 and parts:
                break
            parts.append(PartDigest(offset, length, part_md5.digest(), part_sha.digest()))
            offset += length
            if length < part_size:
                break
    return FileDigest(offset, whole_sha.hexdigest(), whole_md5.hexdigest(), tuple(parts))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# --------------------------------------------------------------------------- stored objects


@dataclass(frozen=True)
class ObjectInfo:
    """What the bucket says about one key.  ``readable`` is false when it came from a
    listing because the credentials may not read objects (then only size and ETag are known)."""

    size: int
    etag: str
    sha256: str | None = None
    checksum_sha256: str | None = None
    checksum_type: str | None = None
    readable: bool = True


def same_content(info: ObjectInfo, digest: FileDigest, *, etag_is_md5: bool) -> bool | None:
    """Whether a stored object holds the bytes ``digest`` describes.

    Every available witness must agree (size, ``x-amz-meta-sha256``, the
    server's SHA-256 checksum, the ETag when it is an MD5); ``None`` when no
    witness beyond the size can decide (e.g. an SSE-KMS object listed with
    write-only credentials).
    """
    if info.size != digest.size:
        return False
    verdicts: list[bool] = []
    if info.sha256:
        verdicts.append(info.sha256.lower() == digest.sha256)
    if info.checksum_sha256:
        value, _, count = info.checksum_sha256.partition("-")
        whole, composite = digest.sha256_b64, digest.composite_sha256()
        if info.checksum_type == "FULL_OBJECT":
            verdicts.append(value == whole)
        elif count:  # composite, "<value>-<parts>": comparable when we would cut the same parts
            if count.isdigit() and int(count) == len(digest.parts):
                verdicts.append(value == composite)
        elif info.checksum_type == "COMPOSITE":
            verdicts.append(value == composite)
        elif value in (whole, composite):  # type not reported (some servers): a match decides, else no vote
            verdicts.append(True)
    if etag_is_md5 and info.etag:
        etag = info.etag.strip('"')
        if "-" not in etag:
            verdicts.append(etag == digest.md5)
        elif etag.rsplit("-", 1)[1] == str(len(digest.parts)):
            verdicts.append(etag == digest.multipart_etag())
    if not verdicts:
        return None
    return all(verdicts)
