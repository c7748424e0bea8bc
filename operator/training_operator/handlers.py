"""kopf handlers: thin I/O around the pure rules of :mod:`~training_operator.manifests`
(TrainingRun → Job), :mod:`~training_operator.job_status` (Job → status) and
:mod:`~training_operator.transitions` (status → store).

Every write to the store is a conditional update; only the caller whose update won writes the
log line and posts the Event, so a handler that runs twice (a retry, a restarted operator, two
watch events for one change) leaves one line and one Event.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import kopf
from training_core.domain import Phase, Run
from training_core.errors import InvalidState, NotFound
from training_core.lifecycle import RunEnd, end_run
from training_core.runspec import CRD_GROUP, CRD_PLURAL, CRD_VERSION, RunSpec
from training_core.settings import load_settings
from training_core.store import RunUpdate, Store, open_store

from training_operator import groups, job_status, manifests, transitions
from training_operator.config import OperatorConfig
from training_operator.job_status import StatusUpdate
from training_operator.kube import Kube, connection_info, load_configuration
from training_operator.manifests import LABEL_RUN
from training_operator.transitions import Transition

TRAINING_RUNS = (CRD_GROUP, CRD_VERSION, CRD_PLURAL)

log = logging.getLogger(__name__)


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """Every handler, registered in a registry of its own (a timer's interval is fixed here)."""
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(login)
    kopf.on.startup(registry=registry)(configure)
    kopf.on.cleanup(registry=registry)(close)
    kopf.on.resume(*TRAINING_RUNS, registry=registry)(ensure_job)
    kopf.on.create(*TRAINING_RUNS, registry=registry)(ensure_job)
    kopf.on.field(*TRAINING_RUNS, field="spec.suspend", registry=registry)(on_suspend)
    kopf.on.delete(*TRAINING_RUNS, registry=registry)(on_delete)
    interval = config.timer_interval_seconds
    kopf.timer(*TRAINING_RUNS, interval=interval, initial_delay=interval, registry=registry)(
        watch_run
    )
    kopf.on.event("batch", "v1", "jobs", labels={LABEL_RUN: kopf.PRESENT}, registry=registry)(
        on_job_event
    )
    kopf.on.event("", "v1", "pods", labels={LABEL_RUN: kopf.PRESENT}, registry=registry)(
        on_pod_event
    )
    return registry


def run(config: OperatorConfig) -> None:
    """Run the operator until it is told to stop (SIGTERM/SIGINT)."""
    kopf.run(
        registry=build_registry(config),
        standalone=True,  # one replica; a Deployment with a Recreate strategy
        namespaces=config.namespaces,
        clusterwide=not config.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{config.liveness_port}/healthz",
    )


# -- lifecycle ------------------------------------------------------------------------------
def login(**_: Any) -> kopf.ConnectionInfo:
    return connection_info(load_configuration())


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = OperatorConfig()
    settings.persistence.finalizer = f"{CRD_GROUP}/finalizer"
    # Handler progress lives in annotations, so the status schema stays strict.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=CRD_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=CRD_GROUP, key="last-handled-configuration"
    )
    # A watch that hears nothing for long is re-opened instead of stalling silently.
    settings.watching.server_timeout = config.watch_server_timeout_seconds
    settings.watching.client_timeout = config.watch_client_timeout_seconds
    settings.watching.connect_timeout = 30
    # The CRD is installed before the operator starts: no cluster-wide scan of namespaces or
    # CRDs is needed, so a namespaced Role is enough.
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING  # kopf's own failures become Events; chatter does not
    settings.execution.max_workers = 16
    memo.config = config
    memo.settings = load_settings()
    memo.store = open_store(memo.settings)
    memo.kube = Kube(load_configuration(), pool_size=settings.execution.max_workers)


def close(memo: kopf.Memo, **_: Any) -> None:
    memo.store.close()
    memo.kube.close()


# -- TrainingRun → Job ----------------------------------------------------------------------
def ensure_job(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Create the run's Job (and, on several nodes, its Service) once; a finished or cancelled
    run never gets a new one."""
    run_id = UUID(body["spec"]["runId"])
    run = _stored_run(memo.store, run_id)
    if run is None:
        # Only the API makes runs: a hand-made TrainingRun would train into nowhere.
        message = f"run {run_id} is not recorded in the store; no Job is created"
        memo.kube.post_event(body, "Warning", "RunNotRecorded", message)
        raise kopf.PermanentError(message)
    if run.phase.is_terminal or Phase(body.get("status", {}).get("phase", "Queued")).is_terminal:
        return
    namespace, name = body.metadata.namespace, body.metadata.name
    service = manifests.service_manifest(body, memo.config)
    if service is not None:  # first, so that node 0 has its name when the pods start
        _owned(
            "Service",
            memo.kube.create_service(service) or memo.kube.get_service(namespace, name),
            body,
        )
    manifest = manifests.job_manifest(body, memo.config)
    job = _owned("Job", memo.kube.create_job(manifest) or memo.kube.get_job(namespace, name), body)
    reconcile(body, job, memo)


def on_suspend(old: Any, new: Any, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """``spec.suspend`` suspends or resumes the Job (its pods go; the checkpoint stays)."""
    if old is None:  # creation: the Job is made with the right value
        return
    job = memo.kube.patch_job(
        body.metadata.namespace, body.metadata.name, {"spec": {"suspend": bool(new)}}
    )
    if job is not None:
        reconcile(body, job, memo)


def on_delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Deleting an unfinished run cancels it; its Job and pods go with it."""
    spec = RunSpec.from_resource(body.metadata.name, body["spec"])
    transition = transitions.cancel_transition(spec.run_name)
    if _commit(memo, spec, transition) is not None:
        _post(memo, body, "Cancelled", transition)
    # No garbage collector may be watching (and it is harmless where one is).
    memo.kube.delete_job(body.metadata.namespace, body.metadata.name)
    if groups.is_group(spec.resources):
        memo.kube.delete_service(body.metadata.namespace, body.metadata.name)


def watch_run(
    body: kopf.Body, status: kopf.Status, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """Refresh progress for ``kubectl get tr`` and flag a run that waits too long for a node."""
    if stopped or Phase(status.get("phase", "Queued")).is_terminal:
        return
    job = memo.kube.get_job(body.metadata.namespace, body.metadata.name)
    if job is None:
        return
    pods = memo.kube.run_pods(body.metadata.namespace, body.metadata.name)
    current = reconcile(body, job, memo, pods)
    if job_status.pending_too_long(current, datetime.now(UTC), memo.config.pending_timeout_seconds):
        _flag_pending(body, current, pods, memo)


# -- Job and pod changes → run ----------------------------------------------------------------
def on_job_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    run = memo.kube.get_run(body.metadata.namespace, body.metadata.labels[LABEL_RUN])
    if run is None or run["metadata"].get("deletionTimestamp"):
        return  # the run is going: its deletion handler settles it
    if event["type"] == "DELETED":
        # A finished run's Job may go (TTL): the conditional update then changes nothing.
        apply(run, job_status.job_deleted_status(), memo)
    else:
        reconcile(run, body, memo)


def on_pod_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    namespace, name = body.metadata.namespace, body.metadata.labels[LABEL_RUN]
    run = memo.kube.get_run(namespace, name)
    job = memo.kube.get_job(namespace, name) if run is not None else None
    if run is not None and job is not None and not run["metadata"].get("deletionTimestamp"):
        reconcile(run, job, memo)


# -- the one path every handler takes ------------------------------------------------------------
def reconcile(
    run_body: Any, job: Any, memo: kopf.Memo, pods: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Job (+ pods) → store (conditional) → TrainingRun status; returns the new status."""
    meta = run_body["metadata"]
    if pods is None:
        pods = memo.kube.run_pods(meta["namespace"], meta["name"])
    return apply(run_body, job_status.run_status(job, pods), memo)


def apply(run_body: Any, update: StatusUpdate, memo: kopf.Memo) -> dict[str, Any]:
    """Store the update (if the run is where it expects) and show it on the TrainingRun."""
    meta = run_body["metadata"]
    spec = RunSpec.from_resource(meta["name"], run_body["spec"])
    transition = transitions.transition_for(update, meta["name"])
    won = _commit(memo, spec, transition)
    run = won or _stored_run(memo.store, spec.run_id)
    if won is not None:
        _post(memo, run_body, update.reason, transition)
    current = dict(run_body.get("status") or {})
    patch = job_status.status_patch(current, update, run, _now(), spec.epochs)
    patch["jobName"] = meta["name"]
    patch["worldSize"] = spec.resources.world_size
    if any(current.get(key) != value for key, value in patch.items()):
        memo.kube.patch_run_status(meta["namespace"], meta["name"], patch)
    return {**current, **patch}


def _commit(memo: kopf.Memo, spec: RunSpec, transition: Transition) -> Run | None:
    """Apply the transition if the run is where it expects; the run when this call won."""
    store: Store = memo.store
    try:
        if transition.phase.is_terminal:  # the one way a run ends, the project with it
            ended = RunEnd(
                spec.run_id, spec.project_id, transition.phase, transition.log_line,
                transition.level, error=transition.error,
            )  # fmt: skip
            return end_run(store, memo.settings, ended).run
        run = store.update_run(
            spec.run_id,
            RunUpdate(phase=transition.phase, error=transition.error),
            transition.expected,
        )
    except (InvalidState, NotFound):
        return None
    store.log(spec.project_id, transition.log_line, transition.level)
    return run


def _stored_run(store: Store, run_id: UUID) -> Run | None:
    try:
        return store.get_run(run_id)
    except NotFound:
        return None


def _post(memo: kopf.Memo, run_body: Any, reason: str, transition: Transition) -> None:
    kind = "Warning" if transition.level in ("warning", "error") else "Normal"
    memo.kube.post_event(run_body, kind, reason, transition.log_line)


def _flag_pending(
    run_body: Any, status: dict[str, Any], pods: list[dict[str, Any]], memo: kopf.Memo
) -> None:
    meta = run_body["metadata"]
    why = job_status.unschedulable_message(pods)
    seconds = int(memo.config.pending_timeout_seconds)
    message = f"still waiting for a node after {seconds} s" + (f": {why}" if why else "")
    condition = job_status.Condition(
        "PendingTooLong", "True", "Unschedulable" if why else "NoNodeYet", message
    )
    conditions = job_status.merge_conditions(status.get("conditions") or [], [condition], _now())
    # The condition is the "already flagged" mark: written first, so a crash can lose the
    # log line but never write it twice.
    memo.kube.patch_run_status(meta["namespace"], meta["name"], {"conditions": conditions})
    memo.kube.post_event(run_body, "Warning", "PendingTooLong", message)
    spec = RunSpec.from_resource(meta["name"], run_body["spec"])
    memo.store.log(spec.project_id, f"TrainingRun {meta['name']} {message}", "warning")


def _owned(kind: str, found: dict[str, Any] | None, run_body: kopf.Body) -> dict[str, Any]:
    """The run's own Job or Service (made now, or by an earlier try of this handler)."""
    if found is None:
        raise kopf.TemporaryError(
            f"the {kind} vanished right after it was found; retrying", delay=5
        )
    owners = found.get("metadata", {}).get("ownerReferences") or []
    if not any(owner.get("uid") == run_body.metadata.uid for owner in owners):
        raise kopf.TemporaryError(
            f"a {kind} named {run_body.metadata.name} from an earlier TrainingRun still exists;"
            " waiting for it to be deleted",
            delay=30,
        )
    return found


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
