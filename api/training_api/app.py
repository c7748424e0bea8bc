"""The app factory: ``create_app(settings, store=None, launcher=None)``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from training_core.errors import AgentError
from training_api.launchers import Launcher, open_launcher
from training_core.settings import Settings, SettingsError
from training_core.store import Store, open_store
from training_api.auth import Authenticator
from training_api.bodylimit import BodyLimitMiddleware
from training_api.errors import install_error_handlers
from training_api.mcp import mount_mcp
from training_api.metrics import ApiMetrics, MetricsMiddleware
from training_api.ratelimit import RateLimiter
from training_api.routes import system, training
from training_api.schemas import set_maximum
from training_api.service import TrainingService
from training_api.webpage import mount_page

log = logging.getLogger(__name__)

SWEEP_INTERVAL_SECONDS = 60.0

DESCRIPTION = """Turns a project's image dataset into a trained PyTorch model.

Every endpoint except `/health` and `/ready` needs `Authorization: Bearer <token>`; so does
the MCP server at `/mcp` (streamable HTTP). A web page for watching runs is at `/ui/` (it asks
for the token and sends it as that header).
Errors have one shape: `{"success": false, "error": {"code": "...", "message": "..."}}`.
"""


def check_access(settings: Settings, *, allow_anonymous: bool) -> None:
    """Refuse to serve without tokens, unless anonymous access is asked for on purpose."""
    if not settings.api_tokens and not allow_anonymous:
        raise SettingsError(
            "API_TOKENS is empty: set at least one token, or allow anonymous access on purpose"
            " (training-agent serve --insecure)"
        )


def create_app(
    settings: Settings,
    store: Store | None = None,
    launcher: Launcher | None = None,
    *,
    allow_anonymous: bool = False,
) -> FastAPI:
    """Build the API. What it opens itself (store, launcher) it also closes on shutdown.

    Without ``API_TOKENS`` it refuses to start, unless ``allow_anonymous`` says so on purpose.
    """
    check_access(settings, allow_anonymous=allow_anonymous)
    if not settings.api_tokens:
        log.warning("API_TOKENS is empty: the API accepts anonymous requests")
    owned_store = store is None
    store = store or open_store(settings)
    owned_launcher = launcher is None
    launcher = launcher or open_launcher(settings, store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeping = asyncio.create_task(sweep_stale_claims(app.state.service))
        try:
            async with app.state.mcp.running():
                yield
        finally:
            sweeping.cancel()
        if owned_launcher:
            launcher.close()
        if owned_store:
            store.close()

    metrics = ApiMetrics()
    app = FastAPI(
        title="Training Agent",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.service = TrainingService(settings, store, launcher, metrics)
    app.state.authenticator = Authenticator(settings.api_tokens, allow_anonymous=allow_anonymous)
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute)
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(system.router)
    app.include_router(training.router)
    app.state.mcp = mount_mcp(app)
    mount_page(app)  # the web page for watching runs, at /ui/
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts the 413s too
    document_bounds(app, settings)
    return app


async def sweep_stale_claims(service: TrainingService) -> None:
    """At start-up, then every minute (or sooner, for a shorter STALE_CLAIM_SECONDS)."""
    interval = min(SWEEP_INTERVAL_SECONDS, service.settings.stale_claim_seconds)
    while True:
        try:
            await asyncio.to_thread(service.release_stale_claims)
        except AgentError as error:  # the store is down: the next sweep tries again
            log.warning("could not release stale project claims: %s", error)
        await asyncio.sleep(interval)


def document_bounds(app: FastAPI, settings: Settings) -> None:
    """Put the bounds that come from the settings into the OpenAPI schema clients read."""
    schema = app.openapi()  # built once and cached: changes here are what /openapi.json serves
    for param in schema["paths"]["/agents/training/status/{project_id}"]["get"]["parameters"]:
        if param["name"] == "logs":
            set_maximum(param["schema"], settings.status_logs_max)
    fields = schema["components"]["schemas"]["StartRequest"]["properties"]
    set_maximum(fields["epochs"], settings.max_epochs)
    set_maximum(fields["batch_size"], settings.max_batch_size)
