"""The experiment trackers teams already use, fed from every run:

* **TensorBoard** event files next to the model, in ``<model_url minus .pth>_tb/<run name>/``:
  one scalar per epoch per metric (``train_loss``, ``val_loss``, ``val_accuracy``,
  ``images_per_second``), ``test_accuracy`` at the last epoch, and the hyper-parameters. They
  are written into the run's scratch folder and copied to the bucket after every epoch (a
  watcher sees them grow) and at the end. Each attempt writes a file of its own (TensorBoard
  merges the files of one folder); the epochs an earlier attempt already wrote are not written
  again.
* **MLflow**, when ``MLFLOW_TRACKING_URI`` is set: one MLflow run per training run, found again
  by its ``training_agent.run_id`` tag when an attempt resumes, with the parameters, the same
  metrics (``step`` = epoch), the metrics JSON and the curves PNG as artifacts, and a status
  that follows the run (RUNNING; KILLED while an interrupted run, preempted or cancelled,
  waits to resume; FINISHED; FAILED).

Both are side channels: nothing they do fails the training or holds it up for long. Each call
is bounded (``MLFLOW_TIMEOUT_SECONDS``, the bucket's own retries); the first failure of a
tracker goes to the run's log once (``Experiment tracking lost (…)``), later calls try again
(what could not be sent waits for the next call), and after :data:`FAILURES_BEFORE_GIVING_UP`
failures in a row the tracker is given up for the rest of the attempt.

The event folder is the run's training record, like its ``agent_logs``: it is kept whatever the
outcome (a failed or cancelled run's curves are what one looks at to see why), while a failed
run's model and its companions are removed.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from training_core.blobs import BlobStore
from training_core.runspec import RunSpec, model_sibling
from training_core.settings import Settings

from trainer.engine import EpochResult
from trainer.tracking import Tracker

if TYPE_CHECKING:
    from trainer.engine import Trainer

log = logging.getLogger("trainer")
F = TypeVar("F", bound=Callable[..., None])

EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "images_per_second")
FINAL_METRICS = ("test_accuracy",)  # logged once, at the last epoch's step
FAILURES_BEFORE_GIVING_UP = 3
EVENT_FILE_PREFIX = "events.out.tfevents."
# What the upload step writes into the scratch folder next to the model: the artifacts.
COMPANIONS = ("metrics.json", "curves.png")
RUN_ID_TAG = "training_agent.run_id"
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch call
MAX_ERROR_CHARS = 300


# -- pure decisions ----------------------------------------------------------------------
def event_folder_url(model_url: str, run_name: str) -> str:
    """``…/flowers_model.pth`` → ``…/flowers_model_tb/<run name>/``: the run's TensorBoard
    folder, beside the model, so ``tensorboard --logdir`` on the models' folder shows every run.

    A folder per run inside: a model URL can serve a second run when the first ended without a
    model (the same ``--output`` of ``training-agent train``; a bucket kept across a fresh
    database), and the two runs' curves must not merge into one."""
    return f"{model_sibling(model_url, '_tb')}/{run_name}/"


@dataclass(frozen=True)
class Verdict:
    report: bool  # tell the run's log (once per attempt)
    give_up: bool  # stop trying for the rest of the attempt


@dataclass
class Outage:
    """How a tracker rides out failures: the first one is reported, later calls try again,
    and after ``limit`` failures in a row the tracker is given up."""

    limit: int = FAILURES_BEFORE_GIVING_UP
    failures: int = 0  # in a row
    reported: bool = False
    given_up: bool = False

    def failed(self) -> Verdict:
        self.failures += 1
        report = not self.reported
        self.reported = True
        self.given_up = self.given_up or self.failures >= self.limit
        return Verdict(report=report, give_up=self.given_up)

    def succeeded(self) -> bool:
        """``True`` when this success ends a run of failures."""
        recovered = self.failures > 0
        self.failures = 0
        return recovered


def epoch_values(result: EpochResult) -> dict[str, float]:
    return {name: float(getattr(result, name)) for name in EPOCH_METRICS}


def missing_epochs(
    history: Iterable[EpochResult], logged: dict[str, set[int]]
) -> list[tuple[int, str, float]]:
    """``(step, name, value)`` of the history not logged yet: what a resumed attempt adds."""
    return [
        (result.epoch, name, value)
        for result in history
        for name, value in epoch_values(result).items()
        if result.epoch not in logged.get(name, set())
    ]


def redact_uri(uri: str) -> str:
    """A tracking URI without its user and password, for messages."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def short_error(error: BaseException, uri: str | None = None) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    if uri:
        text = text.replace(uri, redact_uri(uri))
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def run_parameters(spec: RunSpec, trainer: Trainer | None) -> dict[str, Any]:
    """The hyper-parameters both trackers show; the trainer adds what only it knows."""
    params: dict[str, Any] = {
        "model": spec.model, "epochs": spec.epochs, "learning_rate": spec.learning_rate,
        "batch_size": spec.batch_size, "image_size": spec.image_size,
        "pretrained": spec.pretrained,
    }  # fmt: skip
    if spec.seed is not None:
        params["seed"] = spec.seed
    if trainer is not None:
        params.update(
            seed=trainer.config.seed,
            precision="bf16" if trainer.amp else "fp32",
            compiled=trainer.compiled,
            device=trainer.device.type,
        )
    return params


# -- the trackers ------------------------------------------------------------------------
class _Channel:
    """One tracker's failure handling: every call goes through :meth:`_attempt`."""

    name = ""

    def __init__(self, report: Callable[[str], None]) -> None:
        self._report = report
        self.outage = Outage()

    @property
    def where(self) -> str:
        return self.name

    def _attempt(self, what: str, call: Callable[[], None], *, closing: bool = False) -> bool:
        """``closing``: the attempt's outcome is in the run's log already, and stays its last
        line: a failure then goes to the process log only."""
        if self.outage.given_up:
            return False
        try:
            call()
        except Exception as error:  # noqa: BLE001 - a tracker never fails the training
            self._failed(what, error, closing=closing)
            return False
        if self.outage.succeeded():
            log.info("experiment tracking (%s) is back", self.where)
        return True

    def _failed(self, what: str, error: Exception, *, closing: bool) -> None:
        verdict = self.outage.failed()
        message = short_error(error, getattr(self, "uri", None))
        if verdict.report and not closing:
            self._report(
                f"Experiment tracking lost ({self.where}): {message}; training goes on without it"
            )
        if verdict.give_up:
            log.warning(
                "experiment tracking (%s) given up after %d failed calls in a row (last: %s: %s)",
                self.where, self.outage.failures, what, message,
            )  # fmt: skip
        else:
            log.warning("experiment tracking (%s): %s failed: %s", self.where, what, message)


class TensorBoardEvents(_Channel):
    name = "TensorBoard"

    def __init__(self, blobs: BlobStore, folder_url: str, report: Callable[[str], None]) -> None:
        super().__init__(report)
        self.blobs = blobs
        self.folder_url = folder_url
        self._local: Path | None = None  # this attempt's folder: set once opened
        self._writer: Any = None  # made at the first write (none: nothing new to write)
        self._logged: dict[str, set[int]] = {}
        self._hparams_logged = False
        self._uploaded: dict[Path, int] = {}  # local file → the size the bucket has

    @property
    def where(self) -> str:
        return f"TensorBoard events in {self.folder_url}"

    @property
    def opened(self) -> bool:
        return self._local is not None

    def open(self, scratch: Path, hparams: dict[str, Any], history: Sequence[EpochResult]) -> None:
        def read_earlier() -> None:  # if this fails, an epoch may be written twice: no worse
            self._hparams_logged = self._read_earlier(scratch / "tensorboard-earlier")

        def call() -> None:
            if not self._hparams_logged:
                self._write_hparams(hparams)
            for step, name, value in missing_epochs(history, self._logged):
                self._scalar(name, value, step)
            self._flush_and_upload()

        self._local = scratch / "tensorboard"
        self._attempt("read the earlier attempts' events", read_earlier)
        self._attempt("open", call)

    def epoch(self, result: EpochResult) -> None:
        self.scalars(epoch_values(result), result.epoch, what=f"epoch {result.epoch}")

    def scalars(self, values: dict[str, float], step: int, what: str = "final metrics") -> None:
        if not self.opened:
            return

        def call() -> None:
            for name, value in values.items():
                self._scalar(name, value, step)
            self._flush_and_upload()

        self._attempt(what, call)

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return

        def call() -> None:
            writer.close()
            self._upload()

        self._attempt("close", call, closing=True)

    # -- inside one attempt ------------------------------------------------------------
    def _writer_now(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            assert self._local is not None
            self._writer = SummaryWriter(log_dir=str(self._local))  # one new file: this attempt's
        return self._writer

    def _scalar(self, name: str, value: float, step: int) -> None:
        steps = self._logged.setdefault(name, set())
        if step in steps:  # an earlier attempt wrote it (or this one did): never twice
            return
        self._writer_now().add_scalar(name, value, global_step=step)
        steps.add(step)

    def _write_hparams(self, hparams: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        # Into the run's own file (not a sub-run as ``add_hparams`` makes): the HParams view
        # then reads the metrics from this run's scalars.
        metrics = {name: 0.0 for name in ("val_accuracy", "val_loss", *FINAL_METRICS)}
        for summary in hparams_summaries(hparams, metrics):
            self._writer_now().file_writer.add_summary(summary)
        self._hparams_logged = True

    def _flush_and_upload(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._upload()

    def _upload(self) -> None:
        assert self._local is not None
        for path in sorted(self._local.glob(f"{EVENT_FILE_PREFIX}*")):
            size = path.stat().st_size
            if self._uploaded.get(path) == size:
                continue
            self.blobs.upload(
                path, self.folder_url + path.name, create_only=False,
                content_type="application/octet-stream",
            )  # fmt: skip
            self._uploaded[path] = size

    def _read_earlier(self, folder: Path) -> bool:
        """Note the steps earlier attempts wrote; ``True`` if they wrote the hparams."""
        from tensorboard.backend.event_processing.event_file_loader import (
            LegacyEventFileLoader,
        )

        folder.mkdir(parents=True, exist_ok=True)
        hparams = False
        for url in self.blobs.list(self.folder_url):
            name = url.rsplit("/", 1)[-1]
            if not name.startswith(EVENT_FILE_PREFIX):
                continue
            local = folder / name
            self.blobs.download(url, local)
            for event in LegacyEventFileLoader(str(local)).Load():
                for value in event.summary.value:
                    if value.tag.startswith("_hparams_/"):
                        hparams = True
                    elif value.HasField("simple_value"):
                        self._logged.setdefault(value.tag, set()).add(event.step)
            local.unlink()
        return hparams


class MlflowRun(_Channel):
    name = "MLflow"

    def __init__(
        self, uri: str, experiment: str, spec: RunSpec, extra_tags: dict[str, str],
        report: Callable[[str], None],
    ) -> None:  # fmt: skip
        super().__init__(report)
        self.uri, self.experiment, self.spec = uri, experiment, spec
        self.tags = {
            RUN_ID_TAG: str(spec.run_id),
            "training_agent.project_id": str(spec.project_id),
            "training_agent.run_name": spec.run_name,
            "training_agent.model_url": spec.model_url,
            **extra_tags,
        }
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._client: Any = None
        self._params: dict[str, Any] = {}
        self._pending: list[tuple[int, str, float]] = []  # (step, name, value) not sent yet
        self.ended = False

    @property
    def where(self) -> str:
        return f"MLflow at {redact_uri(self.uri)}"

    def start(self, params: dict[str, Any], history: Sequence[EpochResult]) -> None:
        self._params = params
        self._pending = missing_epochs(history, {})
        self._attempt("start", self._sync)

    def epoch(self, result: EpochResult) -> None:
        if self.ended:
            return
        self._pending.extend((result.epoch, name, v) for name, v in epoch_values(result).items())
        self._attempt(f"epoch {result.epoch}", self._sync)

    def finish(self, values: dict[str, float], step: int, artifacts: Sequence[Path]) -> None:
        if self.ended:
            return
        self._pending.extend((step, name, value) for name, value in values.items())

        def call() -> None:
            self._sync()
            if self.ended:  # found finished by an earlier attempt
                return
            for path in artifacts:
                self._client.log_artifact(self.run_id, str(path))

        self._attempt("final metrics and artifacts", call)

    def end(self, status: str) -> None:
        """FINISHED, FAILED, or KILLED (an interrupted attempt: the next one sets RUNNING)."""
        if self.ended:
            return

        def call() -> None:
            self._sync()
            if not self.ended:
                self._client.set_terminated(self.run_id, status)

        self.ended = self._attempt(f"end ({status})", call, closing=True) or self.outage.given_up

    @property
    def run_url(self) -> str | None:
        if self.run_id is None or not self.uri.startswith(("http://", "https://")):
            return None
        base = redact_uri(self.uri).rstrip("/")
        return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    # -- the calls ---------------------------------------------------------------------
    def _sync(self) -> None:
        """Open the run if it is not yet, then send what waits."""
        if self.run_id is None:
            self._open()
        if self._pending:
            self._log_metrics(self._pending)
            self._pending = []

    def _open(self) -> None:
        from mlflow.tracking import MlflowClient

        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        client = self._client
        experiment_id = self._experiment_id()
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{self.spec.run_id}'",
            max_results=1, order_by=["attributes.start_time ASC"],
        )  # fmt: skip
        if found:  # a resumed attempt: the same MLflow run, what it has not logged yet
            run = found[0]
            run_id = run.info.run_id
            if run.info.status == "FINISHED":  # the model was recorded: nothing changes it
                self.run_id, self.experiment_id, self.ended = run_id, experiment_id, True
                self._pending = []
                return
            client.update_run(run_id, status="RUNNING")
            logged_params = set(run.data.params)
            logged = {
                name: {metric.step for metric in client.get_metric_history(run_id, name)}
                for name in {name for _, name, _ in self._pending}
            }
            self._pending = [item for item in self._pending if item[0] not in logged[item[1]]]
        else:
            run_id = client.create_run(
                experiment_id, tags=self.tags, run_name=self.spec.run_name
            ).info.run_id
            logged_params = set()
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in self._params.items() if k not in logged_params]
        if params:
            client.log_batch(run_id, params=params)
        self.run_id, self.experiment_id = run_id, experiment_id

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        client = self._client
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            try:
                return client.create_experiment(self.experiment)
            except MlflowException:  # created meanwhile by another run: use that one
                experiment = client.get_experiment_by_name(self.experiment)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage != "active":
            raise RuntimeError(f"experiment {self.experiment!r} is deleted")
        return experiment.experiment_id

    def _log_metrics(self, items: Sequence[tuple[int, str, float]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, step) for step, name, value in items]
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            batch = metrics[start : start + MAX_METRICS_PER_BATCH]
            self._client.log_batch(self.run_id, metrics=batch)


def configure_mlflow_client(settings: Settings) -> None:
    """Calls that fail fast: our own bounded retries (at the next call) replace MLflow's
    (7 retries with backoff: minutes per call while a server is away)."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(settings.mlflow_timeout_seconds)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # pods often have no internet


def _never_raises(method: F) -> F:
    """The workflow's hooks: whatever goes wrong here, training goes on."""

    @functools.wraps(method)
    def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            method(*args, **kwargs)
        except Exception:  # noqa: BLE001 - each tracker reports its own failures
            log.warning("experiment tracking: %s failed", method.__name__, exc_info=True)

    return guarded  # type: ignore[return-value]


class Experiments:
    """What the training workflow calls: ``start`` when training starts, ``epoch`` after each
    epoch, ``succeeded`` once the model is recorded, ``close`` at the end of every attempt."""

    def __init__(
        self, spec: RunSpec, settings: Settings, blobs: BlobStore, tracker: Tracker
    ) -> None:
        self.spec = spec
        self.tracker = tracker
        folder = event_folder_url(spec.model_url, spec.run_name)
        self.tensorboard = (
            TensorBoardEvents(blobs, folder, self._report) if settings.tensorboard else None
        )
        self.mlflow: MlflowRun | None = None
        if settings.mlflow_tracking_uri:
            configure_mlflow_client(settings)
            tags = (
                {"training_agent.tensorboard": self.tensorboard.folder_url}
                if self.tensorboard
                else {}
            )
            self.mlflow = MlflowRun(
                settings.mlflow_tracking_uri, settings.mlflow_experiment, spec, tags, self._report
            )
        self.started = False
        self.done = False

    @_never_raises
    def start(self, trainer: Trainer, scratch: Path) -> None:
        """Training starts (or resumes: the epochs already done are in its history)."""
        self.started = True
        params = run_parameters(self.spec, trainer)
        history = trainer.state.history
        if self.tensorboard:
            self.tensorboard.open(scratch, params, history)
        if self.mlflow:
            self.mlflow.start(params, history)
        self._announce()

    @_never_raises
    def epoch(self, result: EpochResult) -> None:
        if self.tensorboard:
            self.tensorboard.epoch(result)
        if self.mlflow:
            self.mlflow.epoch(result)

    @_never_raises
    def succeeded(self, metrics: dict[str, Any], scratch: Path) -> None:
        """The model is recorded: the final metrics and the artifacts. Also after an attempt
        that found the model already uploaded and did not train."""
        self.done = True
        history = metrics.get("history") or []
        step = int(history[-1]["epoch"]) if history else self.spec.epochs
        final = {
            name: float(metrics[name]) for name in FINAL_METRICS if metrics.get(name) is not None
        }
        if self.tensorboard:
            if not self.tensorboard.opened:
                self.tensorboard.open(scratch, run_parameters(self.spec, None), [])
            self.tensorboard.scalars(final, step)
        if self.mlflow:
            if not self.started:
                self.mlflow.start(run_parameters(self.spec, None), [])
            artifacts = [scratch / name for name in COMPANIONS if (scratch / name).is_file()]
            self.mlflow.finish(final, step, artifacts)

    @_never_raises
    def close(self, *, ended: bool) -> None:
        """The attempt ends: the event files' last copy, and the MLflow run's status: FINISHED
        with a model, FAILED when the run ended without one, KILLED when it was interrupted
        (to be resumed)."""
        try:
            if self.tensorboard:
                self.tensorboard.close()
        finally:
            if self.mlflow and (self.started or self.done):
                self.mlflow.end("FINISHED" if self.done else "FAILED" if ended else "KILLED")

    def _announce(self) -> None:
        parts = []
        if self.tensorboard and self.tensorboard.opened:
            parts.append(f"TensorBoard events in {self.tensorboard.folder_url}")
        if self.mlflow and self.mlflow.run_id:
            mlflow = self.mlflow
            where = mlflow.run_url or redact_uri(mlflow.uri)
            parts.append(
                f"MLflow run {mlflow.run_id} of experiment '{mlflow.experiment}' ({where})"
            )
        if parts:
            self._report("Experiment tracking: " + "; ".join(parts), "info")

    def _report(self, message: str, level: str = "warning") -> None:
        try:
            self.tracker.log(message, level)
        except Exception:  # noqa: BLE001 - the store's own outage handling is elsewhere
            log.warning("%s", message)
