"""Images by reference: read the s3:// or file:// object a job names (shared/image_refs.py).

read_reference(uri, max_bytes, client=None) -> the bytes, or a FaceResult error: image_not_found
when the object is missing (or not readable), image_too_large past max_bytes (never more than
max_bytes + 1 bytes are read), internal_error when the store cannot be reached. Pixel limits apply
afterwards, in the pipeline, as for uploads. The object is the customer's: it is never deleted.
"""

import logging
import os
import stat
import threading
from typing import Any

from shared.blob import s3_client
from shared.image_refs import BadUri, ImageRef, parse_uri
from worker.batch.model import INTERNAL_ERROR
from worker.face.errors import IMAGE_TOO_LARGE
from worker.face.types import FaceResult

log = logging.getLogger(__name__)

IMAGE_NOT_FOUND = "image_not_found"
MISSING_CODES = ("NoSuchKey", "NoSuchBucket", "404", "NotFound", "AccessDenied", "403")
_client: Any = None
_client_lock = threading.Lock()


class _NotFound(Exception):
    pass


class _TooLarge(Exception):
    pass


def _shared_client() -> Any:
    global _client
    with _client_lock:
        if _client is None:
            _client = s3_client()
        return _client


def _too_large(max_bytes: int) -> FaceResult:
    return FaceResult(
        error_code=IMAGE_TOO_LARGE, error_message=f"the image is larger than the limit of {max_bytes} bytes"
    )


def read_reference(uri: str, max_bytes: int, client: Any = None) -> bytes | FaceResult:
    """The object's bytes, or a FaceResult error; see the module docstring. One retry on an
    unexpected error."""
    try:
        ref = parse_uri(uri)
    except BadUri:
        return FaceResult(error_code=IMAGE_NOT_FOUND, error_message="the image uri is not valid")
    for attempt in range(2):
        try:
            if ref.scheme == "s3":
                return _read_s3(ref, max_bytes, client or _shared_client())
            return _read_file(ref.key, max_bytes)
        except _NotFound:
            return FaceResult(error_code=IMAGE_NOT_FOUND, error_message="no readable object at the image uri")
        except _TooLarge:
            return _too_large(max_bytes)
        except Exception as exc:
            if attempt == 1:
                log.warning("image uri read failed", extra={"scheme": ref.scheme, "error": type(exc).__name__})
    return FaceResult(error_code=INTERNAL_ERROR, error_message="the image could not be read from its uri")


def _read_s3(ref: ImageRef, max_bytes: int, client: Any) -> bytes:
    from botocore.exceptions import ClientError

    try:
        response = client.get_object(Bucket=ref.bucket, Key=ref.key)
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in MISSING_CODES:
            raise _NotFound() from None
        raise
    body = response["Body"]
    try:
        if int(response.get("ContentLength") or 0) > max_bytes:
            raise _TooLarge()
        data: bytes = body.read(max_bytes + 1)
    finally:
        body.close()
    if len(data) > max_bytes:
        raise _TooLarge()
    return data


def _read_file(path: str, max_bytes: int) -> bytes:
    """A regular file's bytes (O_NONBLOCK: a FIFO never blocks the worker, and is refused)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        raise _NotFound() from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
        os.close(fd)
        raise _NotFound() if not stat.S_ISREG(info.st_mode) else _TooLarge()
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _TooLarge()
    return data
