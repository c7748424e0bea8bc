"""Authentication, rate limits, health, readiness, metrics and the error shape of the framework."""

from __future__ import annotations

import logging
from uuid import uuid4

import pytest
from fastapi.testclient import TestClient

from training_api.launchers.kubernetes import KubernetesLauncher
from training_core.settings import SettingsError
from training_api import create_app

from tests.integration.api.conftest import AUTH, TOKEN, error_of, make_settings

START = "/agents/training/start"
PROTECTED = [
    ("POST", START),
    ("GET", f"/agents/training/status/{uuid4()}"),
    ("POST", f"/agents/training/cancel/{uuid4()}"),
    ("GET", "/agents/training/runs"),
    ("GET", f"/agents/training/metrics/{uuid4()}"),
    ("GET", "/metrics"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer", "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x"]
)
def test_everything_but_health_needs_a_valid_token(app, method, path, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    with TestClient(app) as anonymous:
        response = anonymous.request(
            method, path, headers=headers, json={"project_id": str(uuid4())}
        )

    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_every_configured_token_works(app, project_factory):
    project = project_factory()
    with TestClient(app) as api:
        first = api.get(f"/agents/training/status/{project.id}", headers=AUTH)
        second = api.get(
            f"/agents/training/status/{project.id}",
            headers={"Authorization": "bearer second-token-abcdef"},
        )

    assert first.status_code == second.status_code == 200


def test_tokens_never_reach_the_logs(app, caplog):
    caplog.set_level(logging.DEBUG)
    with TestClient(app) as api:
        api.get("/metrics", headers={"Authorization": "Bearer guessed-secret-value"})
        api.get("/metrics", headers=AUTH)

    assert "guessed-secret-value" not in caplog.text and TOKEN not in caplog.text


def test_the_api_refuses_to_start_without_tokens(database_url, tmp_path, store, idle_launcher):
    settings = make_settings(database_url, tmp_path, api_tokens="")

    with pytest.raises(SettingsError, match="API_TOKENS is empty"):
        create_app(settings, store, idle_launcher)

    with TestClient(create_app(settings, store, idle_launcher, allow_anonymous=True)) as open_api:
        assert open_api.get(f"/agents/training/status/{uuid4()}").status_code == 404


def test_health_and_ready_are_open(app):
    with TestClient(app) as anonymous:
        assert anonymous.get("/health").json() == {"status": "ok"}
        assert anonymous.get("/ready").json() == {"status": "ready"}


def test_not_ready_when_the_store_is_down(tmp_path, idle_launcher):
    settings = make_settings(
        "postgresql://nobody@127.0.0.1:9/none", tmp_path, store_timeout_seconds=0.5
    )
    with TestClient(create_app(settings, launcher=idle_launcher)) as api:
        response = api.get("/ready")
        health = api.get("/health")

    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert error_of(response) == {"code": "not_ready", "message": "the store is unavailable"}
    assert health.status_code == 200


def test_not_ready_when_kubernetes_is_down(settings, store):
    from kubernetes import client as k8s

    configuration = k8s.Configuration()
    configuration.host = "http://127.0.0.1:9"
    configuration.retries = 0
    launcher = KubernetesLauncher("training", k8s.ApiClient(configuration), timeout_seconds=1)
    with TestClient(create_app(settings, store, launcher)) as api:
        response = api.get("/ready")

    assert response.status_code == 503
    assert error_of(response) == {"code": "not_ready", "message": "the launcher is unavailable"}


def test_start_and_cancel_are_rate_limited_per_client(database_url, tmp_path, store, idle_launcher):
    settings = make_settings(database_url, tmp_path, rate_limit_per_minute=2)
    unknown = {"project_id": str(uuid4())}
    with TestClient(create_app(settings, store, idle_launcher), headers=AUTH) as api:
        answers = [api.post(START, json=unknown).status_code for _ in range(2)]
        limited = api.post(f"/agents/training/cancel/{uuid4()}")
        status = api.get(f"/agents/training/status/{uuid4()}")
        other_client = api.post(
            START, json=unknown, headers={"Authorization": "Bearer second-token-abcdef"}
        )

    assert answers == [404, 404]
    assert limited.status_code == 429
    assert error_of(limited)["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 30
    assert status.status_code == 404  # reads are not limited
    assert other_client.status_code == 404  # each token has its own budget


def test_framework_errors_have_the_same_shape(client):
    unknown_route = client.get("/agents/training/nothing-here")
    wrong_method = client.delete(START)

    assert unknown_route.status_code == 404
    assert error_of(unknown_route) == {"code": "not_found", "message": "Not Found"}
    assert wrong_method.status_code == 405
    assert error_of(wrong_method)["code"] == "method_not_allowed"


def test_metrics_count_requests_by_route_and_runs_started(client, project_factory):
    project = project_factory()
    client.post(START, json={"project_id": str(project.id)})
    client.get(f"/agents/training/status/{project.id}")
    client.get(f"/agents/training/status/{uuid4()}")
    client.get("/no-such-page")

    text = client.get("/metrics").text

    route = "/agents/training/status/{project_id}"
    assert f'training_api_requests_total{{method="GET",route="{route}",status="200"}} 1.0' in text
    assert f'training_api_requests_total{{method="GET",route="{route}",status="404"}} 1.0' in text
    assert (
        'training_api_requests_total{method="POST",route="/agents/training/start",status="202"} 1.0'
        in text
    )
    assert 'route="unmatched",status="404"} 1.0' in text
    assert "training_runs_started_total 1.0" in text
    assert (
        f'training_api_request_duration_seconds_count{{method="GET",route="{route}"}} 2.0' in text
    )
    assert str(project.id) not in text  # ids never become labels


def test_openapi_documents_the_error_shape_and_examples(client):
    schema = client.get("/openapi.json").json()

    start = schema["paths"]["/agents/training/start"]["post"]
    assert {"202", "200", "400", "401", "404", "409", "422", "429", "503"} <= set(
        start["responses"]
    )
    assert schema["components"]["schemas"]["StartRequest"]["examples"][0]["project_id"]
    assert "error" in schema["components"]["schemas"]["ErrorResponse"]["properties"]


def test_large_bodies_are_refused_before_they_are_read(client):
    padding = "x" * (70 * 1024)
    declared = client.post(START, json={"project_id": str(uuid4()), "pad": padding})

    def stream():
        for _ in range(70):
            yield b"x" * 1024

    streamed = client.post(START, content=stream(), headers={"Content-Type": "application/json"})

    for response in (declared, streamed):
        assert response.status_code == 413
        assert error_of(response) == {
            "code": "payload_too_large",
            "message": "the request body is larger than 65536 bytes",
        }
