"""GET /healthz (the process answers), GET /readyz (Redis and Postgres answer); GET /metrics
(metrics_router, mounted only with settings.metrics_route: metrics belong on their own port)."""

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import text

from api.deps import Backends, get_backends
from api.errors import error_response
from api.schemas import Health, Readiness, errors
from shared.db.session import get_engine

log = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])
metrics_router = APIRouter(tags=["operations"])


@router.get("/healthz", operation_id="healthz", response_model=Health, summary="The process is alive")
def healthz():
    return {"status": "ok"}


def check_services(backends: Backends) -> dict[str, str]:
    """{"redis": "ok" | "<error>", "postgres": "ok" | "<error>"}."""
    checks = {}
    try:
        backends.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    try:
        with get_engine(backends.urls.database_url).connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = f"unavailable: {type(exc).__name__}"
    return checks


@router.get(
    "/readyz",
    operation_id="readyz",
    response_model=Readiness,
    responses=errors(503),
    summary="Redis and Postgres answer",
)
async def readyz(backends: Annotated[Backends, Depends(get_backends)]):
    checks = await run_in_threadpool(check_services, backends)
    failed = sorted(name for name, state in checks.items() if state != "ok")
    if failed:
        log.warning("not ready", extra={"checks": checks})
        return error_response(
            503, "not_ready", "unavailable: " + ", ".join(failed), {"Retry-After": "5"}, checks=checks
        )
    return {"status": "ready", "checks": checks}


@metrics_router.get(
    "/metrics", summary="Prometheus metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}}
)
async def metrics(request: Request):
    body, content_type = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type=content_type)
