"""``training-agent serve``: the API on uvicorn, in the cluster or on one machine (``--local``)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import uvicorn

from training_core.settings import Settings, get_settings
from training_api.app import create_app

if TYPE_CHECKING:
    from training_core.localstack import LocalStack

log = logging.getLogger(__name__)


def use_local_stack() -> LocalStack:
    """Start (or reuse) the embedded Postgres and folder bucket; its settings become defaults.

    The caller stops the stack when it is done (a no-op if another process started it).
    """
    from training_core.localstack import start_local_stack

    stack = start_local_stack()
    for name, value in stack.env().items():
        os.environ.setdefault(name, value)  # what the environment says still wins
    get_settings.cache_clear()
    return stack


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
