"""``python -m trainer``: train the run described by the environment (``TRAINING_*``, see
:class:`training_core.runspec.RunSpec`) with the agent's settings (store, bucket, limits).

A run of several processes (``TRAINING_NODES`` × ``TRAINING_PROCESSES_PER_NODE``) makes this
program the node's agent (:mod:`trainer.launch`), which starts it again once per process;
each of those joins the group (:mod:`trainer.distributed`) and trains its part.

Its exit codes (``training_core.runspec.EXIT_*``) are documented in the README, "Exit codes".
"""

from __future__ import annotations

import logging
import os
import sys

from pydantic import ValidationError
from training_core.blobs import open_blob_store
from training_core.errors import StoreUnavailable
from training_core.logs import bind, setup_logging
from training_core.runspec import EXIT_MISCONFIGURED, EXIT_RETRY, RunSpec
from training_core.settings import Settings, SettingsError, load_settings
from training_core.store import open_store

from trainer.distributed import Group, join
from trainer.engine import pick_device
from trainer.interrupt import StopFlag
from trainer.launch import run_group
from trainer.tracking import ConsoleTracker, FollowerTracker, StoreTracker, Tracker
from trainer.workflow import TrainingWorkflow, remove_stale_scratch

STOPPING_FLUSH_SECONDS = 2.0
# Set by ``training-agent train``: the run's story goes to the console (named after its
# output folder), its dataset may be a plain path, and there is no store.
CONSOLE_ENV = "TRAINING_CONSOLE_NAME"
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
        if spec.resources.world_size > 1 and "LOCAL_RANK" not in os.environ:
            return lead_group(spec, settings)
        group = join(pick_device(), settings.distributed_timeout_seconds)
        try:
            with bind(rank=group.rank if group.distributed else None):
                if CONSOLE_ENV in os.environ:
                    return _train_on_console(spec, settings, stop, group)
                return _train_with_store(spec, settings, stop, group)
        finally:
            group.leave()


def _train_with_store(spec: RunSpec, settings: Settings, stop: StopFlag, group: Group) -> int:
    try:
        store = open_store(settings)
    except StoreUnavailable as error:
        log.error("the store is unavailable (%s): exiting to be retried", error)
        return EXIT_RETRY
    tracker: Tracker = (
        StoreTracker(store, settings, spec, stopping=stop) if group.leads else FollowerTracker()
    )
    try:
        workflow = TrainingWorkflow(
            spec, settings, open_blob_store(settings), tracker, stop, group=group
        )
        return workflow.run()
    finally:
        # Stopping (SIGTERM): the grace period is short, the checkpoint already saved.
        tracker.close(timeout=STOPPING_FLUSH_SECONDS if stop() else settings.store_retry_seconds)
        store.close()


def _train_on_console(spec: RunSpec, settings: Settings, stop: StopFlag, group: Group) -> int:
    from rich.console import Console

    name = os.environ[CONSOLE_ENV]
    tracker = ConsoleTracker(Console(), name) if group.leads else FollowerTracker()
    workflow = TrainingWorkflow(
        spec, settings, open_blob_store(settings), tracker, stop, local_paths=True, group=group
    )
    return workflow.run()


def lead_group(spec: RunSpec, settings: Settings) -> int:
    """Be this node's agent: run its training processes; say which one was lost, if one was."""
    remove_stale_scratch(settings, spec)
    outcome = run_group(str(spec.run_id), spec.resources)
    if outcome.lost:
        message = f"Training stopped: {outcome.lost}; the run resumes from its last checkpoint"
        log.warning(message)
        if CONSOLE_ENV in os.environ:
            print(message, file=sys.stderr)
        else:
            _record_line(settings, spec, message)
    return outcome.code


def _record_line(settings: Settings, spec: RunSpec, message: str) -> None:
    """One warning in the run's log, if the store answers (the exit code is what counts)."""
    try:
        store = open_store(settings)
        try:
            store.log(spec.project_id, message, "warning", agent=settings.agent_name)
        finally:
            store.close()
    except StoreUnavailable as error:
        log.warning("could not record it (%s)", error)
