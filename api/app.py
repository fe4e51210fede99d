"""create_app(settings=None) -> FastAPI: routes, auth, one error shape, the body limit, access logs.

Backends (blob store, Celery, Redis, database URL) open on first use, so the app starts without them.
"""

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.body_limit import BodyLimitMiddleware
from api.deps import Backends
from api.errors import install_error_handlers
from api.metrics import ApiMetrics
from api.responses import OrjsonResponse
from api.routes import batches, detections, enrollments, health, identifications, jobs, subjects, verifications
from shared.settings import Settings, get_settings

log = logging.getLogger("api.access")
QUIET_PATHS = ("/healthz", "/readyz", "/metrics")


class AccessLogMiddleware:
    """One structured line per request: method, path, status, duration_ms (never headers or bodies)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics | None = None):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def watched_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        finally:
            seconds = time.perf_counter() - start
            if self.metrics is not None and scope["path"] not in QUIET_PATHS:
                self.metrics.answered(scope["method"], scope["path"], status, seconds)
            level = logging.DEBUG if scope["path"] in QUIET_PATHS and status < 400 else logging.INFO
            log.log(
                level,
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(seconds * 1000, 1),
                },
            )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The biofleet HTTP API."""
    settings = settings or get_settings()
    backends = Backends(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        backends.close()

    app = FastAPI(
        title="biofleet",
        version="1",
        summary="Asynchronous face enrollment, verification and identification jobs.",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.backends = backends
    app.state.metrics = ApiMetrics()
    install_error_handlers(app)
    for module in (enrollments, verifications, identifications, detections, batches, jobs, subjects, health):
        app.include_router(module.router)
    if settings.metrics_route:
        app.include_router(health.metrics_router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLogMiddleware, metrics=app.state.metrics)  # outermost: logs and counts 413s too
    return app
