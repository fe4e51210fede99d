"""Bearer API keys. require_tenant (a dependency) -> the caller's tenant id, or 401 "unauthorized",
or 429 "rate_limited" with Retry-After: past settings.rate_limit_requests per rate_limit_window_s
for a key, and, before any lookup, for a client address past settings.auth_failure_limit missing,
unknown or revoked keys per auth_failure_window_s (both checks in one Redis round trip). A key's
tenant is cached in-process for settings.key_cache_s: a revoked key is refused within that window. A key lookup with Postgres down is 503
"database_unavailable" (api/errors.py).

The key is looked up by its sha256 (shared/keys.py); it is never logged.
"""

import logging
import uuid
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import backends_of, get_database_url
from api.errors import ApiError
from api.rate_limit import check_both, count_failure
from shared.db.session import session_scope
from shared.keys import hash_key, tenant_for_key

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


def _limits(request: Request, key: str | None) -> tuple[int | None, int | None]:
    """(Retry-After of the client address, of the key): one Redis round trip; a Redis error lets
    the request through."""
    backends = backends_of(request)
    settings = backends.settings
    try:
        return check_both(
            backends.redis,
            _address(request),
            key,
            settings.auth_failure_limit,
            settings.auth_failure_window_s,
            settings.rate_limit_requests,
            settings.rate_limit_window_s,
        )
    except Exception as exc:
        log.warning("rate limits not checked", extra={"error": type(exc).__name__})
        return None, None


def _failed(request: Request, message: str) -> ApiError:
    """Count a failed authentication of the client address; the 401 to raise."""
    backends = backends_of(request)
    if backends.settings.auth_failure_limit:
        try:
            count_failure(backends.redis, _address(request), backends.settings.auth_failure_window_s)
        except Exception as exc:
            log.warning("failed authentication not counted", extra={"error": type(exc).__name__})
    return unauthorized(message)


async def require_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    database_url: Annotated[str, Depends(get_database_url)],
) -> uuid.UUID:
    """The tenant owning the Bearer key of this request. The key's tenant comes from the
    in-process cache (api/keycache.py) when it was looked up less than key_cache_s ago."""
    backends = backends_of(request)
    settings = backends.settings
    key = credentials.credentials if credentials is not None and credentials.credentials else None
    address_retry = key_retry = None
    if settings.auth_failure_limit or (settings.rate_limit_requests and key):
        address_retry, key_retry = await run_in_threadpool(_limits, request, key)
    if address_retry is not None:
        raise _rate_limited(address_retry, "too many requests with missing or unknown API keys; retry later")
    if key is None:
        raise await run_in_threadpool(_failed, request, "an API key is required: Authorization: Bearer <key>")
    digest = hash_key(key)
    tenant_id = backends.keys.get(digest)
    if tenant_id is None:
        tenant_id = await run_in_threadpool(_lookup, database_url, key)
        if tenant_id is None:
            raise await run_in_threadpool(_failed, request, "unknown or revoked API key")
        backends.keys.put(digest, tenant_id)
    if key_retry is not None:
        raise _rate_limited(key_retry, "too many requests for this API key; retry later")
    return tenant_id


Tenant = Annotated[uuid.UUID, Depends(require_tenant)]
