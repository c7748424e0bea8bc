"""Each failure path: the documented exit code, the run Failed with the step and reason, the
project ``failed`` (or left alone where it was not this run's), a clear log line, no model,
no checkpoints and no scratch files."""

from __future__ import annotations

import pytest
from training_core.domain import Phase
from training_core.runspec import EXIT_DO_NOT_RETRY, EXIT_OK

from tests.integration.trainer.conftest import TrainerCase

# A few digits are enough where the run fails before training, or trains one short epoch.
pytestmark = pytest.mark.digits(limit=200)


def _assert_failed(
    case: TrainerCase, step: str, reason: str, project_status: str = "failed", objects: int = 1
) -> None:
    run = case.store.get_run(case.run.id)
    assert run.phase == Phase.FAILED, case.output()
    assert (run.error or "").startswith(f"Training failed at step '{step}': ")
    assert reason in (run.error or "")
    assert run.finished_at is not None
    assert case.store.get_project(case.project.id).status == project_status
    assert f"Training failed at step '{step}'" in case.log_lines()[-1]
    assert reason in case.log_lines()[-1]
    assert case.store.get_models(case.project.id) == []
    # No model, no checkpoints: only the dataset (when there was one).
    assert case.objects() == [f"{case.bucket_url}/raw/digits.zip"][:objects]
    assert list(case.scratch.iterdir()) == []


def test_a_damaged_archive(trainer_case: TrainerCase, monkeypatch: pytest.MonkeyPatch) -> None:
    case = trainer_case
    case.blobs.write_bytes(case.spec.dataset_url, b"PK\x03\x04 this is not a whole zip file")
    assert case.run_in_process(monkeypatch) == EXIT_DO_NOT_RETRY
    _assert_failed(
        case, "extract and validate dataset", "digits.zip is damaged or not a valid archive"
    )


def test_an_archive_without_a_train_folder(
    trainer_case: TrainerCase, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zipfile

    case = trainer_case
    archive = tmp_path / "flat.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        opened.writestr("cat/1.png", b"")
    case.blobs.upload(archive, case.spec.dataset_url, create_only=False)
    assert case.run_in_process(monkeypatch) == EXIT_DO_NOT_RETRY
    _assert_failed(case, "extract and validate dataset", "train/")


def test_an_unsupported_model(trainer_case: TrainerCase, monkeypatch: pytest.MonkeyPatch) -> None:
    case = trainer_case
    assert case.run_in_process(monkeypatch, model="alexnet") == EXIT_DO_NOT_RETRY
    _assert_failed(
        case,
        "validate run and project state",
        "unsupported model 'alexnet'; supported: resnet18, resnet34",
    )


def test_missing_pretrained_weights(
    trainer_case: TrainerCase, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = trainer_case
    case.env["TORCH_HOME"] = str(tmp_path / "empty-torch-home")
    assert case.run_in_process(monkeypatch, pretrained=True) == EXIT_DO_NOT_RETRY
    _assert_failed(
        case, "build model", "pretrained ImageNet weights for resnet18 are not available offline"
    )


def test_a_missing_dataset(trainer_case: TrainerCase, monkeypatch: pytest.MonkeyPatch) -> None:
    case = trainer_case
    case.blobs.delete(case.spec.dataset_url)
    assert case.run_in_process(monkeypatch) == EXIT_DO_NOT_RETRY
    _assert_failed(
        case, "download dataset", f"dataset {case.spec.dataset_url} not found", objects=0
    )


def test_a_project_that_was_not_claimed_is_left_alone(
    trainer_case: TrainerCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = trainer_case
    case.store.set_project_status(case.project.id, "pending_training")
    assert case.run_in_process(monkeypatch) == EXIT_DO_NOT_RETRY
    _assert_failed(
        case, "validate run and project state", "is 'pending_training', expected 'training'",
        project_status="pending_training",
    )  # fmt: skip


def test_a_model_url_taken_by_another_run(
    trainer_case: TrainerCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = trainer_case
    case.blobs.write_bytes(case.spec.model_url, b"another run's model")
    assert case.run_in_process(monkeypatch) == EXIT_DO_NOT_RETRY
    run = case.store.get_run(case.run.id)
    assert run.phase == Phase.FAILED and "already holds a model of another run" in (run.error or "")
    assert case.blobs.read_bytes(case.spec.model_url) == b"another run's model"  # untouched
    assert case.store.get_project(case.project.id).status == "failed"


def test_an_upload_that_fails_leaves_no_model(
    trainer_case: TrainerCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model's bucket does not exist: training succeeds, the upload is refused."""
    case = trainer_case
    missing_bucket_url = case.spec.model_url.replace(
        case.bucket_url, "gs://no-such-bucket-for-models"
    )
    assert (
        case.run_in_process(monkeypatch, model_url=missing_bucket_url, epochs=1)
        == EXIT_DO_NOT_RETRY
    )
    run = case.store.get_run(case.run.id)
    assert run.phase == Phase.FAILED and run.error.startswith(
        "Training failed at step 'upload model'"
    )
    assert case.store.get_project(case.project.id).status == "failed"
    assert case.store.get_models(case.project.id) == []
    assert list(case.scratch.iterdir()) == []


def test_a_cancelled_run_is_not_started(
    trainer_case: TrainerCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = trainer_case
    case.store.update_run(case.run.id, _cancel())
    assert case.run_in_process(monkeypatch) == EXIT_OK
    assert case.store.get_run(case.run.id).phase == Phase.CANCELLED
    assert case.store.get_project(case.project.id).status == "training"  # the canceller's to change
    assert case.log_lines() == []


def _cancel():
    from training_core.store.base import RunUpdate

    return RunUpdate(phase=Phase.CANCELLED)


def test_a_dataset_outside_the_buckets_is_refused(
    trainer_case: TrainerCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = trainer_case
    assert case.run_in_process(monkeypatch, dataset_url="/etc/passwd") == EXIT_DO_NOT_RETRY
    _assert_failed(case, "download dataset", "dataset URL '/etc/passwd' must be gs://… or file://…")
