"""What the launchers decide without I/O: exit codes, the child's environment, the resource."""

from __future__ import annotations

import signal
from pathlib import Path
from uuid import UUID

import pytest

from training_api.launchers.kubernetes import training_run_resource
from training_api.launchers.local import ExitAction, describe_exit, exit_action, settings_env
from training_core.runspec import RunSpec
from training_core.settings import load_settings

SPEC = RunSpec(
    run_id=UUID("9b1c2d3e-4f5a-4b6c-8d7e-0f1a2b3c4d5e"),
    run_name="train-3f2b6c1e-1a7d5e9b0c34-1",
    project_id=UUID("3f2b6c1e-8d4a-4f6b-9c2e-1a7d5e9b0c34"),
    dataset_url="gs://data-bucket/raw/cats.zip",
    model_url="gs://models-bucket/models/cats_model.pth",
)


@pytest.mark.parametrize(
    ("code", "cancelled", "retries", "action"),
    [
        (0, False, 0, ExitAction.RECORDED),
        (65, False, 0, ExitAction.RECORDED),
        (75, False, 0, ExitAction.RETRY),
        (75, False, 3, ExitAction.FAIL),
        (None, False, 1, ExitAction.RETRY),
        (1, False, 0, ExitAction.FAIL),
        (-signal.SIGKILL, False, 0, ExitAction.FAIL),
        (-signal.SIGTERM, False, 0, ExitAction.RETRY),  # before the trainer's handler
        (-signal.SIGTERM, False, 3, ExitAction.FAIL),
        (-signal.SIGTERM, True, 0, ExitAction.IGNORE),
        (75, True, 0, ExitAction.IGNORE),
    ],
)
def test_exit_actions(code, cancelled, retries, action):
    assert exit_action(code, cancelled=cancelled, retries=retries, retry_limit=3) is action


def test_exits_are_described_for_people():
    assert describe_exit(-signal.SIGKILL) == "the trainer process was killed by SIGKILL"
    assert describe_exit(3) == "the trainer process exited with code 3"
    assert describe_exit(None) == "the trainer process disappeared"


def test_settings_travel_as_environment_without_api_tokens():
    settings = load_settings(
        database_url="postgresql://u:secret@db/x",
        api_tokens="t1,t2",
        local_runs_dir=Path("/r"),
        bucket_url="gs://models-bucket",
    )

    env = settings_env(settings)

    assert env["DATABASE_URL"] == "postgresql://u:secret@db/x"
    assert env["BUCKET_URL"] == "gs://models-bucket" and env["LOCAL_RUNS_DIR"] == "/r"
    assert env["DEFAULT_EPOCHS"] == "10"
    assert "API_TOKENS" not in env and "SUPABASE_URL" not in env


def test_training_run_resource_is_named_and_labelled_after_the_run():
    resource = training_run_resource(SPEC, "training")

    assert (
        resource["apiVersion"] == "training.automl.dev/v1alpha1"
        and resource["kind"] == "TrainingRun"
    )
    assert resource["metadata"]["name"] == SPEC.run_name
    assert resource["metadata"]["namespace"] == "training"
    assert resource["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "training-agent",
        "training.automl.dev/run": SPEC.run_name,
        "training.automl.dev/run-id": str(SPEC.run_id),
        "training.automl.dev/project": str(SPEC.project_id),
    }
    assert resource["spec"] == SPEC.to_resource_spec()
