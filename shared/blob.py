"""The blob store for image bytes: a local folder (file:///abs/dir) or S3 (s3://bucket/prefix).

open_blob_store(url) -> BlobStore with put(key, data), get(key) -> bytes (BlobNotFound when
missing), delete(key) (idempotent) and delete_prefix(prefix) -> number deleted.
Keys are relative paths such as "<tenant_id>/<job_id>/<index>".
s3_client() -> a boto3 S3 client configured the standard AWS way (credentials, region,
AWS_ENDPOINT_URL_S3); the S3 store and the worker's reads of images by reference both use it.
put_all(store, pairs): write (key, bytes) pairs (a remote store's concurrently, on a shared pool);
    on a failure, delete what was written and raise the first error.
delete_all(store, keys): delete each, logging (not raising) failures.
"""

import logging
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

log = logging.getLogger(__name__)
PUT_THREADS = 16  # concurrent writes to a remote store
_put_pool = ThreadPoolExecutor(PUT_THREADS, thread_name_prefix="blob-put")


class BlobNotFound(KeyError):
    """No blob under that key."""


class BlobStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> int: ...


def check_key(key: str) -> str:
    """Return key if it is a safe relative key (no leading '/', no '.' or '..' parts, no empty parts)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise ValueError(f"bad blob key: {key!r}")
    return key


def s3_client() -> Any:
    """A new boto3 S3 client (thread-safe: keep and share it)."""
    import boto3

    return boto3.client("s3")


class FileBlobStore:
    """Blobs as files under root; writes are atomic (temporary file, then rename)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(key) from None

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return
        self._prune(path.parent)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob whose key starts with prefix (a plain string prefix); return the count."""
        if not prefix or prefix.startswith("/") or ".." in prefix.split("/"):
            raise ValueError(f"bad blob prefix: {prefix!r}")
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return 0
        count = 0
        for path in sorted(base.rglob("*"), reverse=True):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and key.startswith(prefix) and not path.name.startswith(".tmp-"):
                path.unlink(missing_ok=True)
                count += 1
            elif path.is_dir() and key.startswith(prefix):
                self._prune(path)
        self._prune(base)
        return count

    def _prune(self, folder: Path) -> None:
        """Remove empty folders from folder up to (not including) root."""
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent


class S3BlobStore:
    """Blobs as S3 objects named <prefix>/<key> in bucket."""

    def __init__(self, bucket: str, prefix: str = "", client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or s3_client()

    def _name(self, key: str) -> str:
        key = check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data)

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._name(key))
        except self.client.exceptions.NoSuchKey:
            raise BlobNotFound(key) from None
        return response["Body"].read()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._name(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with prefix; return the count."""
        if not prefix or prefix.startswith("/"):
            raise ValueError(f"bad blob prefix: {prefix!r}")
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        count = 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objects:  # a page holds at most 1,000 keys, the delete_objects limit
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
                count += len(objects)
        return count


def open_blob_store(url: str) -> BlobStore:
    """A store for url: file:///abs/dir or s3://bucket[/prefix]."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file blob URL must be file:///absolute/path: {url}")
        return FileBlobStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"s3 blob URL needs a bucket: {url}")
        return S3BlobStore(parsed.netloc, parsed.path)
    raise ValueError(f"unsupported blob URL (use file:// or s3://): {url}")


def put_all(store: BlobStore, pairs: Sequence[tuple[str, bytes]]) -> None:
    """A local folder is written in this thread (a file write costs less than a thread hop)."""

    def put(pair: tuple[str, bytes]) -> Exception | None:
        try:
            store.put(*pair)
        except Exception as exc:
            log.warning("blob write failed", extra={"blob_key": pair[0], "error": type(exc).__name__})
            return exc
        return None

    local = isinstance(store, FileBlobStore) or len(pairs) <= 1
    errors = [put(pair) for pair in pairs] if local else list(_put_pool.map(put, pairs))
    failed = [error for error in errors if error is not None]
    if failed:
        delete_all(store, [key for (key, _), error in zip(pairs, errors, strict=True) if error is None])
        raise failed[0]


def delete_all(store: BlobStore, keys: Sequence[str]) -> None:
    for key in keys:
        try:
            store.delete(key)
        except Exception as exc:
            log.warning("blob delete failed", extra={"blob_key": key, "error": type(exc).__name__})
