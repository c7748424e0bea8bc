"""What the web page reads: the runs list, a model's metrics, the epoch history in /status;
and the page's own files, served with strict security headers."""

from __future__ import annotations

import json
import re
import socket
from html.parser import HTMLParser
from pathlib import Path
from uuid import uuid4

import pytest

from fastapi.testclient import TestClient

from training_core.blobs import open_blob_store
from training_core.blobs.local import LocalBlobStore
from training_core.domain import Phase
from training_core.store.base import RunUpdate
from training_api import create_app
from training_api.decisions import metrics_url_of
from training_api.webpage import STATIC_DIR

from tests.integration.api.conftest import AUTH, error_of, make_settings

START = "/agents/training/start"
RUNS = "/agents/training/runs"
HOSTILE_NAME = "<img src=x onerror=alert(1)>"
HISTORY = [
    {"epoch": 1, "loss": 1.2, "val_loss": 1.0, "val_accuracy": 0.6, "images_per_second": 700.0,
     "seconds": 2.5},
    {"epoch": 2, "loss": 0.7, "val_loss": 0.8, "val_accuracy": 0.75, "images_per_second": 720.5,
     "seconds": 2.25},
]  # fmt: skip


def status_url(project_id) -> str:
    return f"/agents/training/status/{project_id}"


def metrics_url(project_id) -> str:
    return f"/agents/training/metrics/{project_id}"


def started(client, project) -> dict:
    answer = client.post(START, json={"project_id": str(project.id)})
    assert answer.status_code == 202, answer.text
    return answer.json()


def succeed(store, run_id, model_url: str, classes=("cat", "dog")) -> None:
    """Play the trainer's end: the models row, then the run Succeeded."""
    run = store.get_run(run_id)
    store.update_run(run_id, RunUpdate(phase=Phase.RUNNING))
    store.insert_model(
        project_id=run.project_id, run_id=run.id, name="m", gcs_url=model_url,
        metadata={"classes": list(classes), "val_accuracy": 0.9},
    )  # fmt: skip
    store.update_run(run_id, RunUpdate(phase=Phase.SUCCEEDED, model_url=model_url))


def write_metrics(model_url: str, document: dict | bytes) -> str:
    url = model_url.removesuffix(".pth") + ".metrics.json"
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    LocalBlobStore().write_bytes(url, data, content_type="application/json")
    return url


# -- the epoch history in /status ----------------------------------------------------------
def test_status_answers_the_runs_epoch_history_and_keeps_its_other_fields(
    client, store, project_factory
):
    project = project_factory("digits", metadata={"epochs": 5})
    run = started(client, project)
    progress = {"epoch": 2, "total_epochs": 5, "loss": 0.7, "val_accuracy": 0.75}
    progress["history"] = HISTORY
    store.update_run(run["run_id"], RunUpdate(phase=Phase.RUNNING, progress=progress))

    body = client.get(status_url(project.id)).json()

    assert body["history"] == HISTORY
    assert body["project_name"] == "digits"
    assert body["progress"]["epoch"] == 2 and body["progress"]["val_accuracy"] == 0.75
    assert "history" not in body["run"]["progress"]  # answered once, at the top
    assert body["run"]["progress"]["loss"] == 0.7


def test_status_history_is_empty_before_a_run_and_skips_entries_that_are_not_epochs(
    client, store, project_factory
):
    project = project_factory()
    assert client.get(status_url(project.id)).json()["history"] == []

    run = started(client, project)
    odd = [HISTORY[0], "not an epoch", {"loss": 1.0}, HISTORY[1]]
    store.update_run(run["run_id"], RunUpdate(progress={"epoch": 2, "history": odd}))

    assert client.get(status_url(project.id)).json()["history"] == HISTORY


# -- the runs list -------------------------------------------------------------------------
def test_the_runs_list_shows_every_projects_runs_newest_first(client, store, project_factory):
    first = project_factory("digits")
    second = project_factory(HOSTILE_NAME)
    older = started(client, first)
    client.post(f"/agents/training/cancel/{first.id}")
    store.set_project_status(first.id, "pending_training")
    newer = started(client, second)
    progress = {"epoch": 1, "total_epochs": 10, "val_accuracy": 0.5, "history": HISTORY[:1]}
    store.update_run(newer["run_id"], RunUpdate(phase=Phase.RUNNING, progress=progress))

    response = client.get(RUNS)

    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    runs = response.json()["runs"]
    assert [(r["project_id"], r["run"]["id"]) for r in runs] == [
        (str(second.id), newer["run_id"]), (str(first.id), older["run_id"])
    ]  # fmt: skip
    # The JSON carries the name as it is: escaping is the page's job.
    assert runs[0]["project_name"] == HOSTILE_NAME and HOSTILE_NAME in response.text
    assert runs[0]["status"] == "running" and runs[0]["project_status"] == "training"
    assert runs[0]["progress"]["epoch"] == 1 and runs[0]["progress"]["val_accuracy"] == 0.5
    assert runs[0]["run"]["model"] == "resnet18" and runs[0]["run"]["started_at"] is not None
    assert "history" not in runs[0]["run"]["progress"]  # the list stays small
    assert runs[1]["run"]["phase"] == "Cancelled"
    assert [r["run"]["id"] for r in client.get(RUNS, params={"limit": 1}).json()["runs"]] == [
        newer["run_id"]
    ]


@pytest.mark.parametrize("limit", [0, 101, "all"])
def test_the_runs_list_limit_is_bounded(client, limit):
    response = client.get(RUNS, params={"limit": limit})
    assert response.status_code == 422 and error_of(response)["code"] == "validation_error"


def test_the_runs_list_is_empty_without_runs(client, project_factory):
    project_factory()
    assert client.get(RUNS).json() == {"success": True, "runs": []}


# -- a model's metrics ---------------------------------------------------------------------
def test_metrics_of_a_succeeded_run_carry_the_confusion_matrix_and_class_names(
    client, store, project_factory
):
    project = project_factory(HOSTILE_NAME)
    run = started(client, project)
    file_url = write_metrics(run["model_url"], {
        "confusion_matrix": [[5, 1], [0, 6]], "confusion_matrix_split": "test",
        "val_accuracy": 0.9, "test_accuracy": 11 / 12, "val_loss": 0.3, "final_loss": 0.25,
        "training_time_seconds": 4.5, "images_per_second": 700.0, "something_else": [1, 2],
        "history": [{"epoch": 1, "train_loss": 0.25, "val_loss": 0.3, "val_accuracy": 0.9,
                     "images_per_second": 700.0, "seconds": 4.5}],
    })  # fmt: skip
    succeed(store, run["run_id"], run["model_url"], classes=("<b>cat</b>", "dog"))

    response = client.get(metrics_url(project.id))

    assert response.status_code == 200, response.text
    assert response.json() == {
        "success": True,
        "project_id": str(project.id),
        "run_id": run["run_id"],
        "model_url": run["model_url"],
        "metrics_url": file_url,
        "classes": ["<b>cat</b>", "dog"],
        "confusion_matrix": [[5, 1], [0, 6]],
        "confusion_matrix_split": "test",
        "val_accuracy": 0.9,
        "test_accuracy": 11 / 12,
        "val_loss": 0.3,
        "final_loss": 0.25,
        "training_time_seconds": 4.5,
        "images_per_second": 700.0,
        "history": [{"epoch": 1, "loss": 0.25, "val_loss": 0.3, "val_accuracy": 0.9,
                     "images_per_second": 700.0, "seconds": 4.5}],
    }  # fmt: skip


def test_metrics_wait_for_the_run_to_succeed(client, store, project_factory):
    project = project_factory()
    never = client.get(metrics_url(project.id))
    run = started(client, project)
    store.update_run(run["run_id"], RunUpdate(phase=Phase.RUNNING))
    running = client.get(metrics_url(project.id))

    assert never.status_code == running.status_code == 404
    assert error_of(never)["code"] == error_of(running)["code"] == "metrics_not_found"
    assert "Running" in error_of(running)["message"]


def test_metrics_refusals_name_the_problem(client, store, project_factory):
    assert error_of(client.get(metrics_url("not-a-uuid")))["code"] == "invalid_project_id"
    unknown = client.get(metrics_url(uuid4()))
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "project_not_found"

    project = project_factory()
    run = started(client, project)
    succeed(store, run["run_id"], run["model_url"])
    missing = client.get(metrics_url(project.id))
    assert missing.status_code == 404 and error_of(missing)["code"] == "metrics_not_found"
    assert "missing" in error_of(missing)["message"]

    write_metrics(run["model_url"], b"{not json")
    broken = client.get(metrics_url(project.id))
    assert broken.status_code == 502 and error_of(broken)["code"] == "invalid_metrics"


def test_metrics_without_a_models_row_have_no_class_names(client, store, project_factory):
    project = project_factory()
    run = started(client, project)
    write_metrics(run["model_url"], {"confusion_matrix": [[1, 0], [0, 1]]})
    store.update_run(run["run_id"], RunUpdate(phase=Phase.SUCCEEDED))

    body = client.get(metrics_url(project.id)).json()

    assert body["classes"] is None and body["confusion_matrix"] == [[1, 0], [0, 1]]


def test_metrics_are_read_from_a_gcs_bucket_and_an_unreachable_one_is_a_503(
    database_url, tmp_path, gcs_bucket_url, monkeypatch, project_factory, store, idle_launcher
):
    settings = make_settings(
        database_url, tmp_path, bucket_url=gcs_bucket_url, download_retries=1,
        retry_initial_delay_seconds=0.01, retry_max_delay_seconds=0.01, blob_timeout_seconds=2,
    )  # fmt: skip
    project = project_factory()
    with TestClient(create_app(settings, store, idle_launcher), headers=AUTH) as api:
        run = started(api, project)
        assert run["model_url"].startswith(gcs_bucket_url)
        open_blob_store(settings).write_bytes(
            metrics_url_of(run["model_url"]), b'{"confusion_matrix": [[3, 1], [0, 4]]}'
        )
        succeed(store, run["run_id"], run["model_url"])
        read = api.get(metrics_url(project.id))

        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")  # nobody there
    with TestClient(create_app(settings, store, idle_launcher), headers=AUTH) as api:
        unreachable = api.get(metrics_url(project.id))

    assert read.status_code == 200, read.text
    assert read.json()["confusion_matrix"] == [[3, 1], [0, 4]]
    assert read.json()["classes"] == ["cat", "dog"]
    assert unreachable.status_code == 503 and unreachable.headers["Retry-After"] == "5"
    assert error_of(unreachable)["code"] == "storage_unavailable"


# -- the page ------------------------------------------------------------------------------
PAGE_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def csp_of(response) -> dict[str, list[str]]:
    policy = response.headers["content-security-policy"]
    return {
        name: values
        for name, *values in (part.split() for part in policy.split(";") if part.strip())
    }


@pytest.mark.parametrize(
    "path", ["/ui/", "/ui/index.html", "/ui/app.js", "/ui/style.css", "/ui/no-such-file.js"]
)
def test_the_page_is_served_without_a_token_and_with_strict_headers(app, path):
    with TestClient(app) as anonymous:
        response = anonymous.get(path)

    assert response.status_code == (404 if "no-such" in path else 200)
    for name, value in PAGE_HEADERS.items():
        assert response.headers[name] == value
    policy = csp_of(response)
    assert policy["default-src"] == ["'self'"] and policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"] and policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"] and policy["form-action"] == ["'self'"]
    assert not any("unsafe" in value for values in policy.values() for value in values)


def test_the_page_files_have_their_types_and_ui_redirects_to_the_page(client):
    assert client.get("/ui/").headers["content-type"].startswith("text/html")
    assert "javascript" in client.get("/ui/app.js").headers["content-type"]
    assert client.get("/ui/style.css").headers["content-type"].startswith("text/css")
    bare = client.get("/ui", follow_redirects=False)
    assert bare.status_code in (301, 307) and bare.headers["location"].endswith("/ui/")


def test_the_api_answers_keep_their_own_headers(client, project_factory):
    answer = client.get(status_url(project_factory().id))
    assert "content-security-policy" not in answer.headers  # /docs needs its own scripts


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline_handlers: list[str] = []
        self.styles = 0
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if tag == "script":
            self.scripts.append(values)
        if tag == "style" or "style" in values:
            self.styles += 1
        self.inline_handlers += [name for name, _ in attrs if name.startswith("on")]
        for name in ("src", "href"):
            if re.match(r"^(https?:)?//", values.get(name) or ""):
                self.external.append(values[name])


def test_the_page_has_no_inline_script_or_style_and_loads_nothing_from_elsewhere():
    tags = _Tags()
    tags.feed((STATIC_DIR / "index.html").read_text())

    assert tags.scripts and all(script.get("src") for script in tags.scripts)
    assert tags.inline_handlers == [] and tags.styles == 0 and tags.external == []


RISKY = {
    "parses data as HTML": r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|DOMParser",
    "runs strings as code": r"\beval\(|new Function|setTimeout\(\s*[\"'`]",
    "may log the token": r"\bconsole\.\w+\(",
    "keeps the token beyond the tab": r"localStorage|document\.cookie",
    "puts data in the URL": r"[?&]token=|searchParams",
    "loads from elsewhere": r"https?://(?!www\.w3\.org/2000/svg)",
}


@pytest.mark.parametrize("path", sorted(STATIC_DIR.glob("*.js")), ids=lambda p: p.name)
def test_the_scripts_build_the_page_from_text_and_keep_the_token_to_the_tab(path: Path):
    code = path.read_text()
    for why, pattern in RISKY.items():
        assert not re.search(pattern, code), f"{path.name} {why}: {re.search(pattern, code)}"
    assert "sessionStorage" in (STATIC_DIR / "api.js").read_text()
