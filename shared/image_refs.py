"""Images by reference: `{"uri": "s3://bucket/key"}` or `{"uri": "file:///abs/path"}` in place of bytes.

The API checks a reference and records it; the worker reads the object (worker/batch/fetch_uri.py).
parse_uri(text) -> ImageRef (its canonical uri), or BadUri for a malformed uri or another scheme.
parse_prefix(text) -> ImageRef for a tenant's allowed prefix (a folder, or a whole bucket).
is_reference(key) -> True for a recorded reference, False for a blob store key (which has no "://").
allowed(ref, prefixes) -> True when ref lies under one of the prefixes.
tenant_prefixes(session, tenant_id) -> the tenant's prefixes; set_tenant_prefixes(session,
    tenant_name, prefixes) stores them in canonical form (the caller owns the transaction).
Checks are on the parsed parts, never on the raw string: the bucket (or host) must be equal, and
the key must sit inside the prefix's folder, segment by segment; "." and ".." segments, empty
segments and their percent-encoded forms (%2e%2e) are refused.
"""

import re
import uuid
from dataclasses import dataclass
from urllib.parse import unquote

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.db.models import Tenant

SCHEMES = ("s3", "file")
MAX_URI_CHARS = 1024
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3 bucket naming rules


class BadUri(ValueError):
    """A malformed image uri or one with an unsupported scheme."""


@dataclass(frozen=True)
class ImageRef:
    """A parsed reference: scheme, bucket ("" for file) and the key's segments."""

    scheme: str
    bucket: str
    parts: tuple[str, ...]

    @property
    def key(self) -> str:
        """The S3 object key, or the absolute file path."""
        joined = "/".join(self.parts)
        return "/" + joined if self.scheme == "file" else joined

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.scheme == "s3" else f"file://{self.key}"


def is_reference(key: str) -> bool:
    """True for a recorded image reference; blob store keys never contain "://"."""
    return "://" in key


def _segments(path: str, allow_empty: bool) -> tuple[str, ...]:
    if not path:
        if allow_empty:
            return ()
        raise BadUri("the uri names no object")
    parts = tuple(path.split("/"))
    for part in parts:
        decoded = unquote(part)
        if part in ("", ".", "..") or decoded in ("", ".", "..") or "/" in decoded or "\\" in decoded:
            raise BadUri("the uri's path has an empty, '.' or '..' segment")
    return parts


def _parse(text: object, folder: bool) -> ImageRef:
    if not isinstance(text, str) or not text:
        raise BadUri("uri must be a non-empty string")
    if len(text) > MAX_URI_CHARS or not text.isprintable() or any(c in text for c in "\\?#"):
        raise BadUri(f"uri must be at most {MAX_URI_CHARS} printable characters, without '\\', '?' or '#'")
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in SCHEMES:
        raise BadUri(f"uri scheme must be one of {', '.join(s + '://' for s in SCHEMES)}")
    if folder:
        rest = rest.rstrip("/")
    if scheme == "s3":
        bucket, _, path = rest.partition("/")
        if not _BUCKET.fullmatch(bucket):
            raise BadUri("s3 uri needs a valid bucket name: s3://bucket/key")
        return ImageRef("s3", bucket, _segments(path, allow_empty=folder))
    if not rest.startswith("/"):  # file://host/... is refused: only local absolute paths
        raise BadUri("file uri must be file:///absolute/path")
    if folder and rest == "":
        raise BadUri("a file prefix must name a folder, not /")
    return ImageRef("file", "", _segments(rest[1:], allow_empty=False))


def parse_uri(text: object) -> ImageRef:
    """The reference named by text; BadUri when malformed or of another scheme."""
    return _parse(text, folder=False)


def parse_prefix(text: str) -> ImageRef:
    """A tenant's allowed prefix: s3://bucket (all of it), s3://bucket/folder/ or file:///folder/.
    A trailing slash is optional: a prefix always names a folder, never part of a name."""
    return _parse(text, folder=True)


def allowed(ref: ImageRef, prefixes: list[str]) -> bool:
    """True when ref lies inside one of prefixes (unparseable prefixes allow nothing)."""
    for text in prefixes:
        try:
            prefix = parse_prefix(text)
        except BadUri:
            continue
        size = len(prefix.parts)
        if (
            ref.scheme == prefix.scheme
            and ref.bucket == prefix.bucket
            and len(ref.parts) > size
            and ref.parts[:size] == prefix.parts
        ):
            return True
    return False


def prefix_text(prefix: ImageRef) -> str:
    """The canonical text of a prefix: its uri with a trailing slash."""
    if prefix.scheme == "s3":
        return f"s3://{prefix.bucket}/" + "".join(part + "/" for part in prefix.parts)
    return "file:///" + "".join(part + "/" for part in prefix.parts)


def tenant_prefixes(session: Session, tenant_id: uuid.UUID) -> list[str]:
    """The tenant's allowed prefixes ([] when none, or no such tenant)."""
    found = session.execute(select(Tenant.image_uri_prefixes).where(Tenant.id == tenant_id)).scalar_one_or_none()
    return list(found or [])


def set_tenant_prefixes(session: Session, tenant_name: str, prefixes: list[str]) -> list[str] | None:
    """Replace the tenant's prefixes (BadUri for a malformed one); the stored list, or None when
    there is no such tenant."""
    canonical = sorted({prefix_text(parse_prefix(text)) for text in prefixes})
    updated = session.execute(
        update(Tenant).where(Tenant.name == tenant_name).values(image_uri_prefixes=canonical).returning(Tenant.id)
    ).first()
    return canonical if updated is not None else None
