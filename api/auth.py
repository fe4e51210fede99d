"""Bearer API keys. require_tenant (a dependency) -> the caller's tenant id, or 401 "unauthorized",
or 429 "rate_limited" with Retry-After: past settings.rate_limit_requests per rate_limit_window_s
for a key, and, before any lookup, for a client address past settings.auth_failure_limit missing,
unknown or revoked keys per auth_failure_window_s. A key lookup with Postgres down is 503
"database_unavailable" (api/errors.py).

The key is looked up by its sha256 (shared/keys.py); it is never logged.
"""

import logging
import uuid
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import get_backends, get_database_url
from api.errors import ApiError
from api.rate_limit import count_failure, failures_retry_after_s, retry_after_s
from shared.db.session import session_scope
from shared.keys import tenant_for_key

log = logging.getLogger(__name__)
bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": 'Bearer realm="biofleet"'})


def _lookup(database_url: str, key: str) -> uuid.UUID | None:
    with session_scope(database_url) as session:
        return tenant_for_key(session, key)


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _rate_limited(retry: int, message: str) -> ApiError:
    return ApiError(429, "rate_limited", message, {"Retry-After": str(retry)})


def _address_check(request: Request) -> None:
    """429 rate_limited when the client address has failed authentication too often; a Redis error
    lets the request through."""
    backends = get_backends(request)
    settings = backends.settings
    if not settings.auth_failure_limit:
        return
    try:
        retry = failures_retry_after_s(
            backends.redis, _address(request), settings.auth_failure_limit, settings.auth_failure_window_s
        )
    except Exception as exc:
        log.warning("address limit not checked", extra={"error": type(exc).__name__})
        return
    if retry is not None:
        raise _rate_limited(retry, "too many requests with missing or unknown API keys; retry later")


def _failed(request: Request, message: str) -> ApiError:
    """Count a failed authentication of the client address; the 401 to raise."""
    backends = get_backends(request)
    if backends.settings.auth_failure_limit:
        try:
            count_failure(backends.redis, _address(request), backends.settings.auth_failure_window_s)
        except Exception as exc:
            log.warning("failed authentication not counted", extra={"error": type(exc).__name__})
    return unauthorized(message)


def _rate_check(request: Request, key: str) -> None:
    """429 rate_limited when the key is over its limit; a Redis error lets the request through."""
    backends = get_backends(request)
    settings = backends.settings
    if not settings.rate_limit_requests:
        return
    try:
        retry = retry_after_s(backends.redis, key, settings.rate_limit_requests, settings.rate_limit_window_s)
    except Exception as exc:
        log.warning("rate limit not checked", extra={"error": type(exc).__name__})
        return
    if retry is not None:
        raise _rate_limited(retry, "too many requests for this API key; retry later")


async def require_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    database_url: Annotated[str, Depends(get_database_url)],
) -> uuid.UUID:
    """The tenant owning the Bearer key of this request."""
    await run_in_threadpool(_address_check, request)
    if credentials is None or not credentials.credentials:
        raise await run_in_threadpool(_failed, request, "an API key is required: Authorization: Bearer <key>")
    tenant_id = await run_in_threadpool(_lookup, database_url, credentials.credentials)
    if tenant_id is None:
        raise await run_in_threadpool(_failed, request, "unknown or revoked API key")
    await run_in_threadpool(_rate_check, request, credentials.credentials)
    return tenant_id


Tenant = Annotated[uuid.UUID, Depends(require_tenant)]
