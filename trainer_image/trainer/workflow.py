"""One training run as ten named steps:

validate the run and project state → fetch project and dataset metadata → download the
dataset → extract and validate it → build the model → train → upload the model → record
the model and the project status → clean up (always) → report.

A failing step is logged with its name and reason, the run marked Failed and the project
``failed``; anything this attempt uploaded is removed, so no partial model is left.
A stop request (SIGTERM) ends training at a batch boundary with a checkpoint saved.

In a group of processes every rank runs these steps; rank 0 alone writes (checkpoints, log
lines, progress, the model and its row), the others share its decisions and train their
part. A peer lost mid-run (:class:`GroupLost`) sends the attempt back to be retried.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch
from training_core.blobs import BlobStore
from training_core.dataset import DatasetDescription
from training_core.errors import (
    BlobExists,
    BlobNotFound,
    BlobUnavailable,
    InvalidInput,
    StoreUnavailable,
)
from training_core.intake import fetch_dataset, open_dataset
from training_core.runspec import (
    CURVES_SUFFIX,
    EXIT_DO_NOT_RETRY,
    EXIT_OK,
    EXIT_RETRY,
    METRICS_SUFFIX,
    RunSpec,
    model_sibling,
)
from training_core.settings import Settings

from trainer.charts import write_charts, write_metrics_json
from trainer.checkpoints import Checkpoints
from trainer.data import Split, memory_budgets, open_split, plan_pipeline
from trainer.distributed import Group, GroupLost
from trainer.engine import (
    EpochResult,
    Interrupted,
    TrainConfig,
    Trainer,
    configure_process,
    cpu_count,
    pick_device,
)
from trainer.experiments import Experiments
from trainer.interrupt import StopFlag, StopRequested
from trainer.models import Weights, check_model_name, create_model
from trainer.outcome import (
    Outcome,
    build_outcome,
    epoch_progress,
    final_progress,
    model_record,
)
from trainer.tracking import ProjectInfo, RunEnded, Tracker

log = logging.getLogger("trainer")


class TrainingWorkflow:
    def __init__(
        self,
        spec: RunSpec,
        settings: Settings,
        blobs: BlobStore,
        tracker: Tracker,
        stop: StopFlag | None = None,
        *,
        local_paths: bool = False,
        group: Group | None = None,
    ) -> None:
        self.spec, self.settings, self.blobs, self.tracker = spec, settings, blobs, tracker
        self.stop = stop or StopFlag()
        self.group = group or Group()
        self.local_paths = local_paths  # a dataset given as a plain path (training-agent train)
        self.step = "start"
        self.uploaded: list[str] = []  # this attempt's objects, removed if it fails
        self.checkpoints: Checkpoints | None = None
        self.experiments = Experiments(spec, settings, blobs, tracker)  # TensorBoard, MLflow
        self.run_over = False  # succeeded, failed or ended elsewhere: checkpoints can go
        self._last_checkpoint = time.monotonic()

    # -- the whole run -------------------------------------------------------------------
    def run(self) -> int:
        """Run every step; the exit code tells the Job (or launcher) what happened."""
        started = time.monotonic()
        if not self.group.distributed:  # a group's agent cleared them before it started
            remove_stale_scratch(self.settings, self.spec)
        scratch = Path(
            tempfile.mkdtemp(
                prefix=f"{self.spec.run_id}-{self.group.rank}-", dir=self.settings.scratch_dir
            )
        )
        self.checkpoints = Checkpoints(self.blobs, self.spec.model_url, self.spec.run_id, scratch)
        try:
            return self._steps(scratch, started)
        except (Interrupted, StopRequested) as stop:
            with suppress(StoreUnavailable):  # exiting to be retried either way
                self.tracker.log(
                    f"Training interrupted ({self.stop.reason or stop}); "
                    "it resumes from the last checkpoint",
                    "warning",
                )
            return EXIT_RETRY
        except GroupLost as lost:
            log.warning("the group of processes is broken (%s): exiting to be retried", lost)
            return EXIT_RETRY
        except RunEnded as ended:
            log.warning("stopping: %s", ended)
            self.run_over = True
            return EXIT_OK
        except StoreUnavailable as error:
            log.error("the store is unavailable (%s): exiting to be retried", error)
            return EXIT_RETRY
        except BlobUnavailable as error:
            with suppress(StoreUnavailable):
                self.tracker.log(
                    f"The bucket is unavailable at step '{self.step}' ({error}); the run "
                    "resumes from its last checkpoint",
                    "warning",
                )
            return EXIT_RETRY
        except Exception as error:
            log.debug("step %s failed", self.step, exc_info=True)
            return self._fail(error)
        finally:
            self.clean_up(scratch)

    def _steps(self, scratch: Path, started: float) -> int:
        if not self.validate_state():
            return EXIT_OK
        if self.group.share(self._already_uploaded() if self.group.leads else None):
            if not self.group.leads:
                return EXIT_OK
            outcome = self._outcome_of_uploaded(scratch)
        else:
            project = self.fetch_metadata()
            dataset = self._take_in_dataset(scratch, project.expected_num_classes)
            device, model, seed = self.build_model(dataset, scratch)
            trained = self.train(model, dataset, device, seed, scratch)
            if trained is None:
                return EXIT_OK  # a rank other than 0: its part is done
            outcome = trained
            self.upload_model(outcome, scratch)
        self.record_model(outcome)
        self.experiments.succeeded(outcome.metrics, scratch)
        return self.report(outcome, time.monotonic() - started)

    @contextmanager
    def _step(self, name: str) -> Iterator[None]:
        self.stop.raise_if_set()
        self.step = name
        log.info("step: %s", name)
        yield

    def _fail(self, error: Exception) -> int:
        reason = (
            str(error)
            if isinstance(error, (InvalidInput, BlobNotFound))
            else f"{type(error).__name__}: {error}"
        )
        for url in reversed(self.uploaded):  # no partial model is left behind
            with suppress(Exception):
                self.blobs.delete(url)
        self.run_over = True
        try:
            self.tracker.fail(f"Training failed at step '{self.step}': {reason}")
        except StoreUnavailable as store_error:
            log.error("could not record the failure (%s): exiting to be retried", store_error)
            return EXIT_RETRY
        return EXIT_DO_NOT_RETRY

    # -- 1. validate the run and the project's state -------------------------------------
    def validate_state(self) -> bool:
        with self._step("validate run and project state"):
            if not self.group.share(self.tracker.begin() if self.group.leads else None):
                self.run_over = True
                return False
            check_model_name(self.spec.model)  # before any download: fail fast and cheap
            self.tracker.log(
                f"Training started: {self.spec.model}, {self.spec.epochs} epochs, "
                f"image size {self.spec.image_size}, batch size {self.spec.batch_size}"
            )
            return True

    def _already_uploaded(self) -> bool:
        """The model is in the bucket: ours (an earlier attempt ended before recording it), or
        another run's, which this run must not overwrite."""
        try:
            info = self.blobs.stat(self.spec.model_url)
        except BlobNotFound:
            return False
        if info.metadata.get("run_id") != str(self.spec.run_id):
            raise InvalidInput(
                f"{self.spec.model_url} already holds a model of another run; "
                "start a new run to get a fresh model URL"
            )
        return True

    # -- 2. fetch project and dataset metadata -------------------------------------------
    def fetch_metadata(self) -> ProjectInfo:
        with self._step("fetch project and dataset metadata"):
            project = self.group.share(self.tracker.project() if self.group.leads else None)
            if project.dataset:
                log.info("project %s, dataset %s", project.name, project.dataset)
            return project

    def _take_in_dataset(self, scratch: Path, expected: int | None) -> DatasetDescription:
        """Steps 3 and 4. In a group, once per node: each node's first process downloads and
        extracts into the node's folder (the same path on every node), and rank 0's
        description serves every rank."""
        intake = self._intake_folder(scratch)
        dataset = None
        if self.group.local_rank == 0:
            intake.mkdir(parents=True, exist_ok=True)
            archive = self.download_dataset(intake)
            dataset = self.extract_and_validate(archive, intake, expected)
        return self.group.share(dataset, patient=True)

    def _intake_folder(self, scratch: Path) -> Path:
        if not self.group.distributed:
            return scratch
        return self.settings.scratch_dir / f"{self.spec.run_id}-node"

    # -- 3. download the dataset -----------------------------------------------------------
    def download_dataset(self, scratch: Path) -> Path:
        with self._step("download dataset"):  # the intake check-dataset runs, in two steps
            fetched = fetch_dataset(
                self.spec.dataset_url, scratch, self.settings, blobs=self.blobs,
                local_paths=self.local_paths,
            )  # fmt: skip
            if fetched.size is not None:
                self.tracker.log(f"Dataset downloaded: {fetched.size / 2**20:.1f} MiB")
            return fetched.path

    # -- 4. extract and validate -----------------------------------------------------------
    def extract_and_validate(
        self, archive: Path, scratch: Path, expected: int | None
    ) -> DatasetDescription:
        with self._step("extract and validate dataset"):
            dataset = open_dataset(archive, scratch, self.settings, expected_num_classes=expected)
            counts = ", ".join(f"{name} {split.total}" for name, split in dataset.splits.items())
            self.tracker.log(f"Dataset: {dataset.num_classes} classes; images: {counts}")
            return dataset

    # -- 5. build the model ----------------------------------------------------------------
    def build_model(
        self, dataset: DatasetDescription, scratch: Path
    ) -> tuple[torch.device, torch.nn.Module, int]:
        with self._step("build model"):
            device = pick_device()
            if device.type == "cuda" and self.group.distributed:
                device = torch.device("cuda", self.group.local_rank)  # a GPU of its own
            seed = self.group.share(self._seed() if self.group.leads else None)
            configure_process(
                device, seed, reproducible=self.spec.seed is not None,
                processes=self.group.local_world_size, rank=self.group.rank,
            )  # fmt: skip
            model = create_model(self.spec.model, dataset.num_classes, self._weights(scratch))
            return device, model, seed

    def _seed(self) -> int:
        """The spec's seed; else a resumed run's own seed; else a fresh one."""
        if self.spec.seed is not None:
            return self.spec.seed
        assert self.checkpoints is not None
        pointer = self.checkpoints.latest_pointer()
        return int(pointer["seed"]) if pointer and "seed" in pointer else random.randrange(2**31)

    def _weights(self, scratch: Path) -> Weights:
        if not self.spec.pretrained:
            return None
        if self.spec.weights_url is None:
            return "imagenet"
        local = scratch / "weights.pth"
        try:
            self.blobs.download(
                self.spec.weights_url, local, max_bytes=self.settings.max_download_bytes
            )
        except BlobNotFound:
            raise InvalidInput(f"weights {self.spec.weights_url} not found") from None
        return local

    # -- 6. train --------------------------------------------------------------------------
    def train(
        self,
        model: torch.nn.Module,
        dataset: DatasetDescription,
        device: torch.device,
        seed: int,
        scratch: Path,
    ) -> Outcome | None:
        """The trained model (on rank 0; ``None`` on the others)."""
        with self._step("train"):
            splits = {name: _split(dataset, name) for name in dataset.splits}
            sources = self._open_sources(splits, device, dataset.largest_image_pixels)
            config = TrainConfig(
                epochs=self.spec.epochs, learning_rate=self.spec.learning_rate,
                batch_size=self.spec.batch_size, seed=seed, compile=self.settings.torch_compile,
                precision=self.settings.precision, image_size=self.spec.image_size,
            )  # fmt: skip
            trainer = Trainer(
                model, sources["train"], len(splits["train"]), sources["val"], len(splits["val"]),
                dataset.num_classes, config, device, self.group,
            )  # fmt: skip
            self._resume(trainer)
            precision = trainer.precision  # decided now, by rank 0, for every rank
            if self.group.leads:
                self.experiments.start(trainer, scratch)
            where = device.type
            if self.group.distributed:
                where = f"{self.group.world_size} processes on {device.type}"
            self.tracker.log(
                f"Training on {where} ({'compiled' if trainer.compiled else 'eager'}, "
                f"{precision}), seed {trainer.config.seed}"
            )
            try:
                history = trainer.fit(
                    lambda result: self._on_epoch_end(trainer, result),
                    self.stop,
                    checkpoint_due=self._checkpoint_due,
                    on_checkpoint=lambda: self._save_checkpoint(trainer),
                )
            except Interrupted:
                self._save_checkpoint(trainer)
                raise
            test = (
                trainer.evaluate(sources["test"], len(splits["test"])) if "test" in splits else None
            )
            validation = trainer.evaluate(sources["val"], len(splits["val"]))
            if not self.group.leads:
                return None
            return build_outcome(
                self.spec, self.tracker.project_id, trainer, dataset, history, validation, test,
                scratch,
            )

    def _open_sources(
        self, splits: dict[str, Split], device: torch.device, largest_image_pixels: int
    ) -> dict[str, Any]:
        ram, gpu = memory_budgets(device)
        processes = self.group.local_world_size  # this node's ranks share its RAM and CPUs
        plan = plan_pipeline(
            sum(len(s) for s in splits.values()),
            self.spec.image_size,
            ram_budget=ram // processes,
            gpu_budget=gpu,
            largest_image_pixels=largest_image_pixels,
            cpus=max(1, cpu_count() // processes),
        )
        where = (
            f"decoded-image cache in {plan.cache_device} memory"
            if plan.mode == "cache"
            else "streaming DataLoader"
            + (", JPEGs decoded on the GPU" if device.type == "cuda" else "")
        )
        self.tracker.log(
            f"Input pipeline: {where}, {plan.decoders} images decoded at once ({plan.reason})"
        )
        started = time.monotonic()
        sources = {
            name: open_split(split, self.spec.image_size, device, plan, self.group)
            for name, split in splits.items()
        }
        if plan.mode == "cache":
            self.tracker.log(
                f"Decoded {sum(len(s) for s in splits.values())} images in {time.monotonic() - started:.1f} s"
            )
        return sources

    def _resume(self, trainer: Trainer) -> None:
        assert self.checkpoints is not None
        state = self.checkpoints.load_latest()
        if state is None:
            return
        trainer.load_state_dict(state)
        done = trainer.state.epochs_done
        within = trainer.state.position.batches
        where = f" and {within} batches of epoch {done + 1}" if within else ""
        self.tracker.log(f"Resuming from checkpoint: {done}/{self.spec.epochs} epochs done{where}")

    def _on_epoch_end(self, trainer: Trainer, result: EpochResult) -> None:
        self.tracker.log(
            f"Epoch {result.epoch}/{self.spec.epochs} completed. Loss: {result.train_loss:.3f}, "
            f"val acc: {result.val_accuracy:.2f} ({result.images_per_second:.0f} images/s)"
        )
        self._save_checkpoint(trainer)
        if self.group.leads:
            self.experiments.epoch(result)
        self.tracker.progress(epoch_progress(trainer, result))

    def _checkpoint_due(self) -> bool:
        """Inside an epoch, every CHECKPOINT_INTERVAL_SECONDS: a node lost without notice
        then costs at most that much training, not the whole epoch."""
        interval = self.settings.checkpoint_interval_seconds
        # Rank 0's clock decides (it saves); the batch boundary's agreement tells the others.
        return self.group.leads and time.monotonic() - self._last_checkpoint >= interval

    def _save_checkpoint(self, trainer: Trainer) -> None:
        assert self.checkpoints is not None
        if not self.group.leads:
            return
        started = time.monotonic()
        try:
            url = self.checkpoints.save(trainer.state_dict())
        except Exception as error:  # noqa: BLE001 - a lost checkpoint costs time, not the run
            log.warning("checkpoint not saved (%s); a resume starts from the previous one", error)
        else:
            log.info("checkpoint %s saved in %.2f s", url.rsplit("/", 1)[-1], time.monotonic() - started)
        self._last_checkpoint = time.monotonic()

    # -- 7. upload the model ---------------------------------------------------------------
    def upload_model(self, outcome: Outcome, scratch: Path) -> None:
        with self._step("upload model"):
            url = self.spec.model_url
            metadata = outcome.record
            metrics_path = write_metrics_json(outcome.metrics, scratch / "metrics.json")
            charts_path = write_charts(
                outcome.metrics["history"], outcome.metrics["confusion_matrix"], metadata["classes"],
                scratch / "curves.png", title=f"{self.spec.model} — {Path(url).stem}",
            )  # fmt: skip
            # The companions first: the model's presence means the whole set is there.
            for path, suffix, kind in (
                (metrics_path, METRICS_SUFFIX, "application/json"),
                (charts_path, CURVES_SUFFIX, "image/png"),
            ):
                self.uploaded.append(model_sibling(url, suffix))
                self.blobs.upload(
                    path, model_sibling(url, suffix), create_only=False, content_type=kind
                )
            try:
                self.blobs.upload(
                    outcome.model_path, url, create_only=True, content_type="application/octet-stream",
                    metadata={"run_id": str(self.spec.run_id)},
                )  # fmt: skip
            except BlobExists:
                self._already_uploaded()  # ours (a concurrent attempt): done; another run's: error
                return
            self.uploaded.append(url)
            self.blobs.verify_upload(outcome.model_path, url)
            self.tracker.log(
                f"Model uploaded to {url} ({outcome.model_path.stat().st_size / 2**20:.1f} MiB)"
            )

    def _outcome_of_uploaded(self, scratch: Path) -> Outcome:
        """An earlier attempt uploaded the model but did not record it: record what it wrote."""
        with self._step("upload model"):
            local = scratch / "model.pth"
            self.blobs.download(self.spec.model_url, local)
            artifact = torch.load(local, map_location="cpu", weights_only=True)
            self.tracker.log(
                f"Model already uploaded to {self.spec.model_url} by this run; recording it"
            )
            return Outcome(
                local, artifact["metadata"]["metrics"], model_record(artifact["metadata"])
            )

    # -- 8. record the model and the project's status ------------------------------------
    def record_model(self, outcome: Outcome) -> None:
        with self._step("record model and project status"):
            name = Path(self.spec.model_url).stem
            self.tracker.succeed(
                name, self.spec.model_url, outcome.record, final_progress(self.spec, outcome)
            )
            self.run_over = True

    # -- 9. clean up (always) --------------------------------------------------------------
    def clean_up(self, scratch: Path) -> None:
        self.experiments.close(ended=self.run_over)  # before the scratch (their files) goes
        shutil.rmtree(scratch, ignore_errors=True)
        if self.group.distributed and self.group.local_rank == 0:  # the node's dataset
            shutil.rmtree(self._intake_folder(scratch), ignore_errors=True)
        if self.run_over and self.checkpoints is not None and self.group.leads:
            try:
                self.checkpoints.clear()  # an ended run is never resumed
            except Exception as error:  # noqa: BLE001 - leftovers cost storage, not correctness
                log.warning("checkpoints not removed: %s", error)

    # -- 10. report ------------------------------------------------------------------------
    def report(self, outcome: Outcome, seconds: float) -> int:
        record = outcome.record
        test = record.get("test_accuracy")
        self.tracker.log(
            f"Training finished in {_duration(record['training_time_seconds'])} of training "
            f"({_duration(seconds)} in all): val acc {record['val_accuracy']:.3f}"
            + (f", test acc {test:.3f}" if test is not None else "")
            + f". Model: {self.spec.model_url}"
        )
        return EXIT_OK


def remove_stale_scratch(settings: Settings, spec: RunSpec) -> None:
    """Scratch folders left by a killed attempt of this run (of any of its processes)."""
    settings.scratch_dir.mkdir(parents=True, exist_ok=True)
    for stale in settings.scratch_dir.glob(f"{spec.run_id}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _split(dataset: DatasetDescription, name: str) -> Split:
    samples = dataset.splits[name].samples
    return Split(
        tuple(dataset.root / path for path, _ in samples), tuple(label for _, label in samples)
    )


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m {rest:02d}s" if minutes else f"{rest}s"
