"""Following a run from the command line: the progress bar's state, the API's refusals,
riding out an API that is briefly away, what ``runs status`` prints, where the token is read."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from training_agent.api_client import ApiRefused, ApiUnreachable, refusal_of
from training_agent.cli_runs import read_token, riding_out, status_lines
from training_agent.run_progress import bar_state

RUN = {"name": "train-1", "phase": "Running", "epochs": 5, "error": None}


def answer(**fields) -> dict:
    values = {
        "project_id": "3f2b6c1e-8d4a-4f6b-9c2e-1a7d5e9b0c34",
        "project_status": "training",
        "run": RUN,
        "progress": {"epoch": 2, "total_epochs": 5, "loss": 0.4123, "val_accuracy": 0.875},
        "model_url": "file:///b/models/p_model.pth",
        "logs": [],
    }
    return {**values, **fields}


def test_the_bar_follows_the_run_until_a_terminal_phase() -> None:
    running = bar_state(answer())
    assert (running.description, running.completed, running.total) == ("Running", 2, 5)
    assert running.detail == "loss 0.412  val acc 0.875" and not running.finished

    done = bar_state(answer(run={**RUN, "phase": "Cancelled"}))
    assert done.finished


def test_before_any_progress_the_total_comes_from_the_run_then_the_hint() -> None:
    assert bar_state(answer(progress={})).total == 5
    assert bar_state({"run": None, "progress": {}}, total_epochs=3).total == 3
    assert bar_state({}).description == "Queued"


def test_refusals_keep_the_apis_code_and_message() -> None:
    body = {"success": False, "error": {"code": "no_active_run", "message": "nothing to cancel"}}
    refused = refusal_of(409, body)
    assert (refused.status, refused.code) == (409, "no_active_run")
    assert refused.message == "nothing to cancel"
    assert not refused.transient and refusal_of(503, body).transient
    assert refusal_of(502, "<html>bad gateway</html>").code == "http_error"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_briefly_absent_api_is_waited_out_for_a_while() -> None:
    clock, outcomes = Clock(), []

    def fetch() -> dict:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    poll = riding_out(fetch, patience=10, clock=clock)
    outcomes[:] = [ApiUnreachable("down"), ApiRefused(503, "store_unavailable", "later"), {"ok": 1}]
    assert poll() is None
    clock.now = 9
    assert poll() is None
    assert poll() == {"ok": 1}  # and the patience starts over

    outcomes[:] = [ApiUnreachable("down"), ApiUnreachable("still down")]
    assert poll() is None
    clock.now = 20
    with pytest.raises(ApiUnreachable):
        poll()

    outcomes[:] = [ApiRefused(401, "unauthorized", "bad token")]
    with pytest.raises(ApiRefused):
        poll()  # not transient: no waiting


def test_status_lines_for_people() -> None:
    logs = [
        {"created_at": "t2", "message": "Epoch 2/5"},
        {"created_at": "t1", "message": "Epoch 1/5"},
    ]  # newest first, as the API sends them
    lines = status_lines(answer(logs=logs))
    assert lines[0].endswith("training")
    assert lines[1] == "run      train-1  Running  epoch 2/5  loss 0.412  val acc 0.875"
    assert lines[-2:] == ["  t1  Epoch 1/5", "  t2  Epoch 2/5"]  # newest last

    failed = status_lines(answer(run={**RUN, "phase": "Failed", "error": "dataset refused"}))
    assert "error    dataset refused" in failed

    assert status_lines(answer(run=None))[-1] == "run      none yet"


def test_the_token_given_wins_then_its_file_then_the_local_stacks(tmp_path: Path) -> None:
    local = tmp_path / "api-token"
    assert read_token(None, None, local) is None  # an --insecure API needs none
    local.write_text("local-token\n")
    assert read_token(None, None, local) == "local-token"
    named = tmp_path / "named"
    named.write_text("named-token")
    assert read_token(None, named, local) == "named-token"
    assert read_token("given", named, local) == "given"
    with pytest.raises(typer.BadParameter):
        read_token(None, tmp_path / "missing", local)
