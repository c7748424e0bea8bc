"""``LocalLauncher``: runs are child processes of the API on one machine.

It plays, for one machine, the part the operator plays on Kubernetes:

- each run is ``python -m trainer`` in its own process group, with the environment contract
  of the Job (``RunSpec.to_env()`` plus the agent's settings), output in
  ``LOCAL_RUNS_DIR/<run>/trainer.log``;
- at most ``LOCAL_MAX_CONCURRENT`` run at a time; the rest wait in a FIFO queue;
- cancel is SIGTERM to the process group (the trainer checkpoints and exits), SIGKILL after a
  grace period;
- a watcher thread reads each trainer's end (:mod:`.exits`: the exit codes are the README's):
  the trainer recorded its outcome (anything still active is marked Failed), it was
  interrupted (the run is re-queued and resumes from its checkpoint, at most
  ``backoff_limit`` times), or it crashed (the run and the project are marked failed). A run
  ends through :func:`training_core.lifecycle.end_run`, conditional on the run still being
  active, so it never overwrites what the trainer wrote.
  An exit the store cannot take yet (it is down) is kept and handled on a later tick, each
  step of it once. A run that ends here (failed, cancelled) has its scratch folders and its
  checkpoints removed: a killed trainer could not remove them, and an ended run is never
  resumed. A run failed here also loses what its trainer uploaded of its model (the model
  itself, if it is this run's, and its companions), as a trainer does when it fails.
- restart-safe: on start-up every active run is looked at. A trainer still alive (pid and
  process start time recorded in ``<run>/pid``) is adopted and watched; any other active run
  is re-queued, so it resumes from its checkpoint (the trainer is idempotent).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter, deque
from contextlib import suppress
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import ValidationError
from training_core.blobs import delete_folder, open_blob_store
from training_core.domain import ACTIVE_PHASES, Phase, Run
from training_core.errors import BlobNotFound, InvalidState, StoreUnavailable
from training_core.lifecycle import EndSteps, RunEnd, end_run
from training_core.runspec import RunSpec, checkpoints_prefix, model_companions
from training_core.settings import Settings
from training_core.store.base import RunUpdate, Store

from training_api.launchers.base import Launcher, LauncherUnavailable
from training_api.launchers.local.exits import ExitAction, TrainerExit, describe_exit, exit_action
from training_api.launchers.local.process import (
    LOG_FILE,
    SAFE_RUN_NAME,
    TrainerProcess,
    trainer_env,
)

log = logging.getLogger(__name__)


class LocalLauncher(Launcher):
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        command: list[str] | None = None,
        grace_seconds: float = 10.0,
        poll_seconds: float = 0.5,
    ) -> None:
        self._settings = settings
        self._store = store
        self._blobs = open_blob_store(settings)  # a bucket client is made on first use only
        self._command = command or [sys.executable, "-m", "trainer"]
        self._grace = grace_seconds
        self._poll = poll_seconds
        self._runs_dir = settings.local_runs_dir.resolve()
        self._runs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._queue: deque[RunSpec] = deque()
        self._children: dict[UUID, TrainerProcess] = {}
        self._cancelled: set[UUID] = set()
        self._retries: Counter[UUID] = Counter()
        self._exits: deque[TrainerExit] = deque()  # reaped, not yet wholly recorded (watcher only)
        self._recovered = False
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="local-launcher", daemon=True)
        self._watcher.start()

    # -- the interface -------------------------------------------------------------------
    def start(self, spec: RunSpec) -> None:
        self._run_dir(spec.run_name)  # refuses an unsafe name before anything is queued
        with self._lock:
            if spec.run_id in self._children or any(q.run_id == spec.run_id for q in self._queue):
                return
            self._queue.append(spec)
        self._wake.set()

    def cancel(self, run: Run) -> None:
        with self._lock:
            self._queue = deque(spec for spec in self._queue if spec.run_id != run.id)
            child = self._children.get(run.id)
            if child is not None and child.kill_at is None:
                self._cancelled.add(run.id)  # its exit is the cancel's doing, not a crash
                child.kill_at = time.monotonic() + self._grace
                child.signal_group(signal.SIGTERM)
                log.info("sent SIGTERM to run %s (pid %s)", run.name, child.pid)
        self._wake.set()

    def describe(self, run: Run) -> dict[str, Any] | None:
        with self._lock:
            child = self._children.get(run.id)
            queued = any(spec.run_id == run.id for spec in self._queue)
        log_path = self._runs_dir / run.name / LOG_FILE
        if child is None and not queued and not log_path.exists():
            return None
        state = "running" if child else "queued" if queued else "ended"
        if child is not None and child.kill_at is not None:
            state = "stopping"
        return {"state": state, "pid": child.pid if child else None, "log": str(log_path)}

    def ping(self) -> None:
        if not self._recovered:
            raise LauncherUnavailable("the local launcher is still looking at runs from before")
        if not self._watcher.is_alive():
            raise LauncherUnavailable("the local launcher's watcher has stopped")
        if not os.access(self._runs_dir, os.W_OK):
            raise LauncherUnavailable(f"{self._runs_dir} is not writable")

    def close(self) -> None:
        """Stop watching and stop the trainers (they checkpoint on SIGTERM).

        Their runs stay active in the store: the next start re-queues them and they resume.
        """
        self._stop.set()
        self._wake.set()
        self._watcher.join(timeout=5)
        with self._lock:
            children = list(self._children.values())
            self._children.clear()
            self._queue.clear()
        for child in children:
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self._grace
        for child in children:
            while time.monotonic() < deadline and not child.returncode()[0]:
                time.sleep(0.05)
            if not child.returncode()[0]:
                child.signal_group(signal.SIGKILL)
                if child.process is not None:
                    child.process.wait()

    # -- the watcher ---------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except StoreUnavailable as error:  # an outage: what is pending waits for the store
                log.warning("local launcher: the store is unavailable (%s); retrying", error)
            except Exception:  # noqa: BLE001 - the watcher must outlive any one failure
                log.exception("local launcher: watcher step failed; retrying")
            self._wake.wait(self._poll)
            self._wake.clear()

    def _tick(self) -> None:
        if not self._recovered:
            self._recover()
        self._exits.extend(TrainerExit(child, code) for child, code in self._reap())
        while self._exits:
            ended = self._exits[0]
            try:
                self._on_exit(ended)
            except StoreUnavailable:
                raise  # it stays first, for the next tick
            except Exception:  # noqa: BLE001 - one run's trouble must not hold up the others
                name = ended.process.spec.run_name
                log.exception("local launcher: recording the end of run %s failed", name)
            self._exits.popleft()
        self._fill_slots()

    def _reap(self) -> list[tuple[TrainerProcess, int | None]]:
        ended = []
        now = time.monotonic()
        with self._lock:
            for run_id, child in list(self._children.items()):
                done, code = child.returncode()
                if done:
                    del self._children[run_id]
                    ended.append((child, code))
                elif child.kill_at is not None and now >= child.kill_at:
                    child.signal_group(signal.SIGKILL)
        return ended

    def _fill_slots(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if len(self._children) >= self._settings.local_max_concurrent or not self._queue:
                    return
                spec = self._queue.popleft()
                child = self._spawn(spec)
                if child is not None:
                    self._children[spec.run_id] = child

    def _spawn(self, spec: RunSpec) -> TrainerProcess | None:
        try:
            self._store.update_run(
                spec.run_id, RunUpdate(phase=Phase.RUNNING), expected=ACTIVE_PHASES
            )
        except InvalidState:
            return None  # cancelled or ended while it waited
        except StoreUnavailable:
            self._queue.appendleft(spec)  # try again on the next tick
            raise
        env = trainer_env(self._settings, spec)
        try:
            child = TrainerProcess.spawn(self._command, env, spec, self._run_dir(spec.run_name))
        except OSError as error:
            self._fail(spec, f"could not start the trainer: {error.strerror or error}")
            return None
        log.info("started run %s as pid %s", spec.run_name, child.pid)
        return child

    def _on_exit(self, ended: TrainerExit) -> None:
        spec = ended.process.spec
        if ended.action is None:
            with self._lock:
                cancelled = spec.run_id in self._cancelled
            ended.action = exit_action(
                ended.code,
                cancelled=cancelled,
                retries=self._retries[spec.run_id],
                retry_limit=spec.backoff_limit,
            )
            how = describe_exit(ended.code)
            log.info("run %s ended (%s): %s", spec.run_name, how, ended.action.value)
        if ended.action is ExitAction.RETRY:
            self._retry(spec, ended)
        elif ended.action is ExitAction.RECORDED:
            reason = f"{describe_exit(ended.code)} without recording an outcome"
            self._fail(spec, reason, ended.recorded)
        elif ended.action is ExitAction.FAIL:
            reason = f"{describe_exit(ended.code)} before finishing the run"
            self._fail(spec, reason, ended.recorded)
        with self._lock:
            self._cancelled.discard(spec.run_id)
        if ended.action is not ExitAction.RETRY:
            self._retries.pop(spec.run_id, None)
            self._remove_scratch(spec)
            failed_here = ended.action is not ExitAction.IGNORE and ended.recorded.run
            # The bucket may be slow or down: its retries must not hold up the watcher.
            threading.Thread(
                target=self._remove_uploads, args=(spec, failed_here),
                name="local-launcher-clean-up", daemon=True,
            ).start()  # fmt: skip

    def _retry(self, spec: RunSpec, ended: TrainerExit) -> None:
        if not ended.recorded.run:
            try:
                self._store.update_run(
                    spec.run_id, RunUpdate(phase=Phase.PENDING), expected=ACTIVE_PHASES
                )
            except InvalidState:
                return
            ended.recorded.run = True
            self._retries[spec.run_id] += 1
            with self._lock:
                self._queue.append(spec)
        self._store.log(
            spec.project_id,
            f"Run {spec.run_name}: {describe_exit(ended.code)}; resuming from its checkpoint"
            f" (retry {self._retries[spec.run_id]} of {spec.backoff_limit})",
            "warning",
        )

    def _fail(self, spec: RunSpec, reason: str, recorded: EndSteps | None = None) -> None:
        """Record a failure the trainer could not, unless the run already ended."""
        message = f"{reason}; see {self._runs_dir / spec.run_name / LOG_FILE}"
        failed = RunEnd(
            spec.run_id, spec.project_id, Phase.FAILED,
            f"Run {spec.run_name} failed: {message}", "error", error=message,
        )  # fmt: skip
        with suppress(InvalidState):  # the trainer recorded its outcome: nothing to add
            end_run(self._store, self._settings, failed, steps=recorded)

    def _remove_scratch(self, spec: RunSpec) -> None:
        """What a trainer of this run left in SCRATCH_DIR (its own clean-up never ran if it
        was killed); a trainer names its folders after its run."""
        for folder in self._settings.scratch_dir.glob(f"{spec.run_id}-*"):
            shutil.rmtree(folder, ignore_errors=True)

    def _remove_uploads(self, spec: RunSpec, failed_here: bool) -> None:
        """An ended run is never resumed: its checkpoints go (a trainer that records the end
        removes them itself; a killed or cancelled one cannot). A failure recorded here also
        removes the model's companions and the model, if this run wrote it."""
        prefix = checkpoints_prefix(spec.model_url, spec.run_id)
        try:
            delete_folder(self._blobs, prefix, empty_parents=1)  # and <model>.checkpoints/
            if failed_here:
                for url in model_companions(spec.model_url):
                    self._blobs.delete(url)
                with suppress(BlobNotFound):
                    if self._blobs.stat(spec.model_url).metadata.get("run_id") == str(spec.run_id):
                        self._blobs.delete(spec.model_url)
        except Exception as error:  # noqa: BLE001 - leftovers cost storage, not correctness
            log.warning("uploads of run %s not removed: %s", spec.run_name, error)

    # -- restart safety ------------------------------------------------------------------
    def _recover(self) -> None:
        """Adopt trainers that outlived a previous API process; re-queue the other active runs."""
        runs = self._store.list_active_runs()
        with self._lock:
            for run in runs:
                if run.id in self._children or any(q.run_id == run.id for q in self._queue):
                    continue
                try:
                    spec = RunSpec.model_validate(run.spec)
                except ValidationError:
                    self._mark_unrunnable(run)
                    continue
                adopted = self._adopt(spec)
                if adopted is not None:
                    self._children[run.id] = adopted
                    log.info("adopted run %s (pid %s)", run.name, adopted.pid)
                else:
                    self._queue.append(spec)
                    log.info("re-queued run %s", run.name)
            self._recovered = True

    def _mark_unrunnable(self, run: Run) -> None:
        """A run that cannot be resumed ends Failed and gives its project back, as a run the
        launcher could not start does: it never trained, and a project left ``training``
        would refuse every later start."""
        reason = "its recorded spec is not valid, so it cannot be resumed"
        failed = RunEnd(
            run.id, run.project_id, Phase.FAILED, f"Run {run.name} failed: {reason}", "error",
            error=reason, project_status=self._settings.status_pending,
        )  # fmt: skip
        with suppress(InvalidState):
            end_run(self._store, self._settings, failed)

    def _adopt(self, spec: RunSpec) -> TrainerProcess | None:
        try:
            return TrainerProcess.adopt(spec, self._run_dir(spec.run_name))
        except LauncherUnavailable:
            return None

    def _run_dir(self, name: str) -> Path:
        if not SAFE_RUN_NAME.match(name):
            raise LauncherUnavailable(f"refusing unsafe run name {name!r}")
        return self._runs_dir / name
