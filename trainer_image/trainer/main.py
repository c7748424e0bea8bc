"""``python -m trainer``: train the run described by the environment (``TRAINING_*``, see
:class:`training_core.runspec.RunSpec`) with the agent's settings (store, bucket, limits).

Its exit codes (``training_core.runspec.EXIT_*``) are documented in the README, "Exit codes".
"""

from __future__ import annotations

import logging
import sys

from pydantic import ValidationError
from training_core.blobs import open_blob_store
from training_core.errors import StoreUnavailable
from training_core.logs import bind, setup_logging
from training_core.runspec import EXIT_MISCONFIGURED, EXIT_RETRY, RunSpec
from training_core.settings import SettingsError, load_settings
from training_core.store import open_store

from trainer.interrupt import StopFlag
from trainer.tracking import StoreTracker
from trainer.workflow import TrainingWorkflow

STOPPING_FLUSH_SECONDS = 2.0
log = logging.getLogger("trainer")


def main(stop: StopFlag | None = None) -> int:
    # First: a SIGTERM during start-up must not kill us mid-write.
    stop = stop or StopFlag().install()
    try:
        settings = load_settings()
    except SettingsError as error:
        print(error, file=sys.stderr)
        return EXIT_MISCONFIGURED
    setup_logging(settings.log_level, settings.log_format)
    try:
        spec = RunSpec.from_env()
    except ValidationError as error:
        fields = ", ".join(
            "TRAINING_" + "_".join(str(p) for p in e["loc"]).upper() + f": {e['msg']}"
            for e in error.errors(include_input=False, include_url=False)
        )
        log.error("the run's environment is invalid: %s", fields)
        return EXIT_MISCONFIGURED
    with bind(run_id=spec.run_id, project_id=spec.project_id):
        try:
            store = open_store(settings)
        except StoreUnavailable as error:
            log.error("the store is unavailable (%s): exiting to be retried", error)
            return EXIT_RETRY
        tracker = StoreTracker(store, settings, spec, stopping=stop)
        try:
            return TrainingWorkflow(spec, settings, open_blob_store(settings), tracker, stop).run()
        finally:
            # Stopping (SIGTERM): the grace period is short, the checkpoint already saved.
            tracker.close(timeout=STOPPING_FLUSH_SECONDS if stop() else settings.store_retry_seconds)
            store.close()
