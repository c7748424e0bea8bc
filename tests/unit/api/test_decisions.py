"""The start decisions as plain functions: metadata, overrides, bounds, the run's plan."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest

from training_core.domain import Dataset, Phase, Project, Run
from training_core.settings import load_settings
from training_api.decisions import (
    cancel_cut_short,
    cancellable,
    check_project_kind,
    parse_project_id,
    plan_run,
    progress_of,
    resolve_training,
)
from training_api.errors import ApiError

SETTINGS = load_settings(bucket_url="gs://models-bucket", max_epochs=50, max_batch_size=256)
PROJECT_ID = UUID("3f2b6c1e-8d4a-4f6b-9c2e-1a7d5e9b0c34")


def project(**fields) -> Project:
    values = {
        "id": PROJECT_ID,
        "name": "Cats & Dogs",
        "task_type": "image_classification",
        "framework": "pytorch",
        "status": "pending_training",
        "metadata": {},
    }
    return Project(**{**values, **fields})


def dataset(url: str = "gs://data-bucket/raw/cats.zip") -> Dataset:
    return Dataset(id=uuid4(), project_id=PROJECT_ID, gcs_url=url)


def refusal(call) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value


def test_defaults_come_from_the_settings():
    choice = resolve_training(project(), dataset(), {}, SETTINGS)

    assert (choice.model, choice.epochs, choice.batch_size, choice.image_size) == (
        SETTINGS.default_model,
        SETTINGS.default_epochs,
        SETTINGS.batch_size,
        SETTINGS.image_size,
    )
    assert choice.learning_rate == SETTINGS.default_learning_rate and choice.pretrained is True
    assert choice.dataset_url == "gs://data-bucket/raw/cats.zip"


def test_request_overrides_win_over_metadata_over_defaults():
    metadata = {
        "model": "resnet50",
        "epochs": 7,
        "batch_size": 8,
        "image_size": 96,
        "pretrained": False,
        "seed": 3,
        "num_classes": 4,
        "owner": "platform-key",
    }

    choice = resolve_training(
        project(metadata=metadata), dataset(), {"epochs": 2, "model": "mobilenet_v2"}, SETTINGS
    )

    assert (choice.model, choice.epochs, choice.batch_size, choice.image_size) == (
        "mobilenet_v2",
        2,
        8,
        96,
    )
    assert choice.pretrained is False and choice.seed == 3


@pytest.mark.parametrize(
    ("metadata", "overrides", "status", "code", "message"),
    [
        (
            {"epochs": 51},
            {},
            400,
            "invalid_metadata",
            "project metadata epochs must be between 1 and 50 (got 51)",
        ),
        ({}, {"epochs": 51}, 422, "invalid_parameter", "epochs must be between 1 and 50 (got 51)"),
        (
            {},
            {"batch_size": 257},
            422,
            "invalid_parameter",
            "batch_size must be between 2 and 256 (got 257)",
        ),
        (
            {"image_size": 8},
            {},
            400,
            "invalid_metadata",
            "project metadata image_size must be between 16 and 1024 (got 8)",
        ),
        (
            {"seed": -1},
            {},
            400,
            "invalid_metadata",
            "project metadata seed must be between 0 and 2^32 - 1 (got -1)",
        ),
        (
            {"epochs": "10"},
            {},
            400,
            "invalid_metadata",
            "project metadata is invalid: epochs: Input should be a valid integer",
        ),
        ({"learning_rate": True}, {}, 400, "invalid_metadata", "learning_rate"),
    ],
)
def test_out_of_bounds_values_name_their_source(metadata, overrides, status, code, message):
    error = refusal(
        lambda: resolve_training(project(metadata=metadata), dataset(), overrides, SETTINGS)
    )

    assert (error.status, error.code) == (status, code)
    assert message in error.message


def test_an_unsupported_model_lists_the_supported_ones():
    error = refusal(lambda: resolve_training(project(), dataset(), {"model": "vgg11"}, SETTINGS))

    assert (error.status, error.code) == (400, "unsupported_model")
    assert "'vgg11' requested is not supported" in error.message and "resnet18" in error.message


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"task_type": "text_classification"}, "unsupported_task_type"),
        ({"task_type": None}, "unsupported_task_type"),
        ({"framework": "jax"}, "unsupported_framework"),
    ],
)
def test_only_pytorch_image_classification_is_trained(fields, code):
    assert refusal(lambda: check_project_kind(project(**fields))).code == code


def test_framework_and_task_type_are_case_insensitive():
    check_project_kind(project(task_type="Image_Classification", framework="PyTorch"))


@pytest.mark.parametrize(
    "url",
    ["http://example.com/a.zip", "gs://b/x.zip", "file://relative/x.zip", "s3://bucket/a.zip"],
)
def test_dataset_urls_must_parse(url):
    error = refusal(lambda: resolve_training(project(), dataset(url), {}, SETTINGS))

    assert (error.status, error.code) == (400, "invalid_dataset_url")


@pytest.mark.parametrize(
    "text", ["", "123", "3f2b6c1e-8d4a-4f6b-9c2e", "'; drop table projects; --"]
)
def test_project_ids_must_be_uuids(text):
    assert refusal(lambda: parse_project_id(text)).code == "invalid_project_id"


def test_first_run_plan_uses_the_plain_model_name():
    choice = resolve_training(project(), dataset(), {}, SETTINGS)
    run_id = uuid4()

    spec = plan_run(choice, project(), None, run_id, SETTINGS)

    assert spec.run_id == run_id and spec.project_id == PROJECT_ID
    assert spec.run_name == "train-3f2b6c1e-1a7d5e9b0c34-1"
    assert spec.model_url == "gs://models-bucket/models/cats_dogs_model.pth"


def test_later_runs_get_the_next_attempt_and_their_own_model_url():
    choice = resolve_training(project(), dataset(), {}, SETTINGS)
    previous = Run(
        id=uuid4(),
        project_id=PROJECT_ID,
        name="train-3f2b6c1e-1a7d5e9b0c34-2",
        phase=Phase.FAILED,
        attempt=2,
    )
    run_id = UUID("abcdef01-0000-4000-8000-000000000000")

    spec = plan_run(choice, project(), previous, run_id, SETTINGS)

    assert spec.run_name.endswith("-3")
    assert spec.model_url == "gs://models-bucket/models/cats_dogs_abcdef01_model.pth"


def test_a_first_run_whose_plain_model_name_is_taken_gets_its_own_url():
    choice = resolve_training(project(), dataset(), {}, SETTINGS)
    run_id = UUID("abcdef01-0000-4000-8000-000000000000")

    spec = plan_run(choice, project(), None, run_id, SETTINGS, plain_url_taken=True)

    assert spec.run_name.endswith("-1")
    assert spec.model_url == "gs://models-bucket/models/cats_dogs_abcdef01_model.pth"


def test_progress_shows_only_the_promised_fields():
    run = Run(
        id=uuid4(),
        project_id=PROJECT_ID,
        name="r",
        phase=Phase.RUNNING,
        progress={"epoch": 2, "total_epochs": 5, "internal": "x"},
    )

    assert progress_of(run) == {
        "epoch": 2,
        "total_epochs": 5,
        "loss": None,
        "val_accuracy": None,
        "images_per_second": None,
        "eta_seconds": None,
    }
    assert progress_of(None) == {}


@pytest.mark.parametrize("phase", [Phase.QUEUED, Phase.PENDING, Phase.RUNNING])
def test_active_runs_can_be_cancelled(phase):
    run = Run(id=uuid4(), project_id=PROJECT_ID, name="r", phase=phase)

    assert cancellable(run) is run


@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED])
def test_ended_runs_cannot_be_cancelled(phase):
    run = Run(id=uuid4(), project_id=PROJECT_ID, name="r", phase=phase)

    error = refusal(lambda: cancellable(run))

    assert (error.status, error.code) == (409, "no_active_run")
    assert error.message == f"the project has no active run (latest run is {phase.value})"
    assert refusal(lambda: cancellable(None)).message == "the project has no active run"


@pytest.mark.parametrize(
    ("phase", "status", "cut_short"),
    [
        (Phase.CANCELLED, "training", True),  # the run recorded, the project not yet
        (Phase.CANCELLED, "pending_training", False),  # a cancel that finished
        (Phase.FAILED, "training", False),
        (Phase.RUNNING, "training", False),
    ],
)
def test_a_cancel_cut_short_is_told_apart(phase, status, cut_short):
    run = Run(id=uuid4(), project_id=PROJECT_ID, name="r", phase=phase)

    assert cancel_cut_short(project(status=status), run, SETTINGS) is cut_short


# -- several GPUs and nodes -----------------------------------------------------------------
GROUPS = load_settings(
    bucket_url="gs://models-bucket", max_gpus_per_node=8, max_nodes=4, launcher="kubernetes"
)


def test_gpus_and_nodes_come_from_the_request_the_metadata_or_the_settings():
    default = resolve_training(project(), dataset(), {}, GROUPS)
    from_metadata = resolve_training(project(metadata={"gpus": 4, "nodes": 2}), dataset(), {}, GROUPS)
    asked = resolve_training(
        project(metadata={"gpus": 4, "nodes": 2}), dataset(), {"nodes": 1, "batch_size": 64}, GROUPS
    )

    assert (default.gpus, default.nodes) == (GROUPS.default_gpu_count, 1)
    assert (from_metadata.gpus, from_metadata.nodes) == (4, 2)
    assert (asked.gpus, asked.nodes) == (4, 1)
    spec = plan_run(from_metadata, project(), None, uuid4(), GROUPS)
    assert spec.resources.world_size == 8


def test_the_plan_carries_the_group_shape_to_the_training_run():
    choice = resolve_training(project(), dataset(), {"gpus": 2, "nodes": 3, "batch_size": 48}, GROUPS)

    spec = plan_run(choice, project(), None, uuid4(), GROUPS)

    assert (spec.resources.gpu_count, spec.resources.nodes, spec.resources.world_size) == (2, 3, 6)
    assert spec.to_resource_spec()["resources"]["nodes"] == 3
    assert spec.batch_size == 48  # the global batch: 8 images per process


def test_one_machine_trains_on_one_node():
    local = GROUPS.model_copy(update={"launcher": "local"})

    error = refusal(lambda: resolve_training(project(), dataset(), {"nodes": 2}, local))

    assert (error.status, error.code) == (422, "invalid_parameter")
    assert error.message == "nodes must be 1 with the local launcher (it trains on this machine) (got 2)"


@pytest.mark.parametrize(
    ("metadata", "overrides", "status", "code", "message"),
    [
        ({}, {"gpus": 9}, 422, "invalid_parameter", "gpus must be between 0 and 8 (got 9)"),
        ({}, {"nodes": 5}, 422, "invalid_parameter", "nodes must be between 1 and 4 (got 5)"),
        ({"nodes": 0}, {}, 400, "invalid_metadata", "project metadata nodes must be between 1 and 4 (got 0)"),
        (
            {},
            {"gpus": 4, "nodes": 2, "batch_size": 36},
            422,
            "invalid_parameter",
            "batch_size 36 cannot be split evenly across 8 training processes with at least 2"
            " images each: use a multiple of 8, at least 16 (2 nodes × 4 GPUs)",
        ),
        (
            {"gpus": 8, "batch_size": 8},
            {},
            400,
            "invalid_metadata",
            "project metadata batch_size 8 cannot be split evenly across 8 training processes",
        ),
    ],
)
def test_a_group_the_batch_or_the_limits_refuse_is_refused(metadata, overrides, status, code, message):
    error = refusal(lambda: resolve_training(project(metadata=metadata), dataset(), overrides, GROUPS))

    assert (error.status, error.code) == (status, code)
    assert message in error.message
