"""``training-agent serve``: the API on uvicorn, in the cluster or on one machine (``--local``).

With ``API_WORKERS`` above one, uvicorn runs that many worker processes, each building the
app from the same environment; their Prometheus metrics are pooled in a shared folder, so
``/metrics`` counts every worker's requests whichever worker answers it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import uvicorn
from fastapi import FastAPI

from training_core.logs import setup_logging
from training_core.settings import Settings, load_settings
from training_api.app import check_access, create_app

log = logging.getLogger(__name__)

# ``--insecure``, handed on to worker processes, which read only the environment.
ALLOW_ANONYMOUS_ENV = "TRAINING_AGENT_ALLOW_ANONYMOUS"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own name


def app_from_environment() -> FastAPI:
    """The app of one worker process (a fresh interpreter: its logging is set up here too)."""
    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    return create_app(settings, allow_anonymous=os.environ.get(ALLOW_ANONYMOUS_ENV) == "1")


def run(settings: Settings, *, host: str, port: int, insecure: bool = False) -> None:
    check_access(settings, allow_anonymous=insecure)  # before any worker starts
    log.info(
        "serving the Training Agent API on http://%s:%s, the web page at /ui/"
        " (launcher: %s, %d worker(s))",
        host, port, settings.launcher, settings.api_workers,
    )  # fmt: skip
    options = {
        "host": host,
        "port": port,
        "log_config": None,  # keep the agent's own logging setup
        "access_log": False,  # /metrics counts requests; per-request lines would only add noise
        "server_header": False,
        "timeout_graceful_shutdown": 15,
    }
    if settings.api_workers == 1:
        uvicorn.run(create_app(settings, allow_anonymous=insecure), **options)
        return
    metrics_dir = tempfile.mkdtemp(prefix="training-api-metrics-")
    os.environ[METRICS_DIR_ENV] = metrics_dir
    os.environ[ALLOW_ANONYMOUS_ENV] = "1" if insecure else "0"
    try:
        uvicorn.run(
            f"{__name__}:app_from_environment", factory=True, workers=settings.api_workers,
            **options,
        )  # fmt: skip
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
