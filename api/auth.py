"""Bearer API keys. require_tenant (a dependency) -> the caller's tenant id, or 401 "unauthorized".

The key is looked up by its sha256 (shared/keys.py); it is never logged.
"""

import uuid
from typing import Annotated

from fastapi import Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import get_database_url
from api.errors import ApiError
from shared.db.session import session_scope
from shared.keys import tenant_for_key

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": 'Bearer realm="biofleet"'})


def _lookup(database_url: str, key: str) -> uuid.UUID | None:
    with session_scope(database_url) as session:
        return tenant_for_key(session, key)


async def require_tenant(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    database_url: Annotated[str, Depends(get_database_url)],
) -> uuid.UUID:
    """The tenant owning the Bearer key of this request."""
    if credentials is None or not credentials.credentials:
        raise unauthorized("an API key is required: Authorization: Bearer <key>")
    tenant_id = await run_in_threadpool(_lookup, database_url, credentials.credentials)
    if tenant_id is None:
        raise unauthorized("unknown or revoked API key")
    return tenant_id


Tenant = Annotated[uuid.UUID, Depends(require_tenant)]
