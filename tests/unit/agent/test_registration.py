"""Registering a project from the command line: the options' checks agree with the API's
start decision, dataset URLs and names."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest

from training_api.decisions import resolve_training
from training_api.errors import ApiError
from training_core.domain import Dataset, Project
from training_core.errors import InvalidInput
from training_core.runspec import TrainingMetadata
from training_agent.registration import (
    InvalidOption,
    archive_suffix,
    check_dataset_url,
    dataset_name,
    raw_object_url,
    training_metadata,
)
from training_core.settings import load_settings

SETTINGS = load_settings(max_epochs=50, max_batch_size=256)


def api_accepts(metadata: dict) -> bool:
    project = Project(
        id=uuid4(), name="p", task_type="image_classification", framework="pytorch",
        status="pending_training", metadata=metadata,
    )  # fmt: skip
    dataset = Dataset(id=uuid4(), project_id=project.id, gcs_url="gs://data-bucket/raw/p.zip")
    try:
        resolve_training(project, dataset, {}, SETTINGS)
    except ApiError:
        return False
    return True


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("epochs", 1), ("epochs", 50), ("epochs", 0), ("epochs", 51),
        ("batch_size", 1), ("batch_size", 256), ("batch_size", 0), ("batch_size", 257),
        ("learning_rate", 0.5), ("learning_rate", 0.0), ("learning_rate", 1.0),
        ("image_size", 16), ("image_size", 1024), ("image_size", 15), ("image_size", 1025),
        ("model", "mobilenet_v2"), ("model", "vgg16"),
    ],
)  # fmt: skip
def test_an_option_is_accepted_exactly_when_the_api_would_train_it(option: str, value) -> None:
    try:
        metadata = training_metadata(TrainingMetadata(**{option: value}), SETTINGS)
    except InvalidOption as error:
        assert error.option == option
        assert not api_accepts({option: value})
    else:
        assert metadata == {option: value}
        assert api_accepts(metadata)


def test_options_left_out_stay_out_of_the_metadata() -> None:
    assert training_metadata(TrainingMetadata(), SETTINGS) == {}
    assert training_metadata(TrainingMetadata(pretrained=False, epochs=3), SETTINGS) == {
        "pretrained": False,
        "epochs": 3,
    }


def test_the_bound_of_a_setting_is_named_by_its_value() -> None:
    with pytest.raises(InvalidOption) as caught:
        training_metadata(TrainingMetadata(epochs=51), SETTINGS)
    assert "50" in caught.value.problem


@pytest.mark.parametrize(
    ("url", "bucket", "accepted"),
    [
        ("gs://data-bucket/raw/a.zip", "gs://models-bucket", True),
        ("gs://data-bucket/raw/a.zip", "file:///srv/bucket", True),
        ("file:///srv/data/a.zip", "file:///srv/bucket", True),
        ("file:///srv/data/a.zip", "gs://models-bucket", False),  # a pod cannot read it
        ("https://example.com/a.zip", "file:///srv/bucket", False),
        ("gs://data-bucket/../a.zip", "gs://models-bucket", False),
    ],
)
def test_dataset_urls_are_those_the_trainers_can_read(url: str, bucket: str, accepted: bool):
    if accepted:
        assert check_dataset_url(url, bucket) == url
    else:
        with pytest.raises(InvalidInput):
            check_dataset_url(url, bucket)


def test_raw_names_keep_the_archive_suffix_and_never_repeat() -> None:
    now = datetime(2026, 12, 1, 9, 30, 5, tzinfo=UTC)
    url = raw_object_url("file:///srv/bucket", "Cats & Dogs", "pets.TAR.GZ", now, "a1b2c3")
    assert url == "file:///srv/bucket/raw/cats-dogs-20261201-093005-a1b2c3.tar.gz"
    assert archive_suffix("flowers.tgz") == ".tgz" and archive_suffix("flowers") == ""
    assert dataset_name("flowers.tar.gz") == "flowers" and dataset_name(".zip") == ".zip"
