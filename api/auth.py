"""Bearer API keys. require_tenant (a dependency) -> the caller's tenant id, or 401 "unauthorized",
or 429 "rate_limited" with Retry-After past settings.rate_limit_requests per rate_limit_window_s.

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
from api.rate_limit import retry_after_s
from shared.db.session import session_scope
from shared.keys import tenant_for_key

log = logging.getLogger(__name__)
bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": 'Bearer realm="biofleet"'})


def _lookup(database_url: str, key: str) -> uuid.UUID | None:
    with session_scope(database_url) as session:
        return tenant_for_key(session, key)


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
        message = "too many requests for this API key; retry later"
        raise ApiError(429, "rate_limited", message, {"Retry-After": str(retry)})


async def require_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    database_url: Annotated[str, Depends(get_database_url)],
) -> uuid.UUID:
    """The tenant owning the Bearer key of this request."""
    if credentials is None or not credentials.credentials:
        raise unauthorized("an API key is required: Authorization: Bearer <key>")
    tenant_id = await run_in_threadpool(_lookup, database_url, credentials.credentials)
    if tenant_id is None:
        raise unauthorized("unknown or revoked API key")
    await run_in_threadpool(_rate_check, request, credentials.credentials)
    return tenant_id


Tenant = Annotated[uuid.UUID, Depends(require_tenant)]
