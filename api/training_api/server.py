"""``training-agent serve``: the API on uvicorn, in the cluster or on one machine (``--local``)."""

from __future__ import annotations

import logging

import uvicorn

from training_core.settings import Settings
from training_api.app import create_app

log = logging.getLogger(__name__)


def run(settings: Settings, *, host: str, port: int, insecure: bool = False) -> None:
    app = create_app(settings, allow_anonymous=insecure)
    log.info(
        "serving the Training Agent API on http://%s:%s (launcher: %s)",
        host,
        port,
        settings.launcher,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,  # keep the agent's own logging setup
        access_log=False,  # /metrics counts requests; per-request lines would only add noise
        server_header=False,
        timeout_graceful_shutdown=15,
    )
