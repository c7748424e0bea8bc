"""The MCP server at ``/mcp``, driven by the official MCP client over real HTTP: the app on
uvicorn, a real Postgres, a folder bucket and the local launcher (idle, or the real trainer)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import anyio
import httpx
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import CallToolResult

from training_core.domain import Phase
from training_api.launchers.local import LocalLauncher
from training_core.runspec import SUPPORTED_MODELS
from training_api import create_app

from tests.integration.api.conftest import AUTH, TOKEN, error_of, make_settings, serving

TOOLS = {
    "start_training",
    "get_training_status",
    "wait_for_training",
    "cancel_training",
    "list_training_runs",
    "list_models",
    "get_model_metrics",
    "check_dataset",
    "list_supported_models",
}
READ_ONLY = TOOLS - {"start_training", "cancel_training"}


# -- the client ------------------------------------------------------------------------------
@asynccontextmanager
async def mcp_session(url: str, token: str | None = TOKEN) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        create_mcp_http_client(headers=headers) as http,
        streamable_http_client(url, http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def with_session(url: str, use: Callable[[ClientSession], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with mcp_session(url) as session:
            return await use(session)

    return anyio.run(main)


def call(url: str, tool: str, **arguments: Any) -> CallToolResult:
    return with_session(url, lambda session: session.call_tool(tool, arguments))


def answer_of(result: CallToolResult) -> dict[str, Any]:
    assert not result.isError, result.content
    assert json.loads(result.content[0].text) == result.structuredContent
    return result.structuredContent


def refusal_of(result: CallToolResult) -> dict[str, str]:
    """The error object of a tool error, after checking it has the HTTP API's one shape."""
    assert result.isError, result.structuredContent
    body = json.loads(result.content[0].text)
    assert set(body) == {"success", "error"} and body["success"] is False, body
    assert set(body["error"]) == {"code", "message"}, body
    return body["error"]


def raw_post(url: str, body: dict[str, Any], token: str | None) -> httpx.Response:
    headers = {"Accept": "application/json, text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(url, json=body, headers=headers, timeout=10)


def jsonrpc(method: str, params: dict[str, Any], request_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture
def base_url(app) -> Iterator[str]:
    """The API (idle launcher: runs stay active until cancelled) on a real uvicorn."""
    with serving(app) as url:
        yield url


@pytest.fixture
def mcp_url(base_url: str) -> str:
    return f"{base_url}/mcp"


# -- discovery -------------------------------------------------------------------------------
def test_initialize_lists_the_tools_with_schemas_and_hints(mcp_url, settings):
    async def main():
        async with (
            create_mcp_http_client(headers=AUTH) as http,
            streamable_http_client(mcp_url, http_client=http) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            initialized = await session.initialize()
            return initialized, await session.list_tools()

    initialized, listed = anyio.run(main)

    assert initialized.serverInfo.name == "training-agent"
    assert initialized.capabilities.tools is not None
    assert "start_training" in initialized.instructions
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert len(tool.description) > 60 and tool.title
        assert tool.inputSchema["type"] == "object"
        assert tool.inputSchema["additionalProperties"] is False
        assert tool.outputSchema["type"] == "object" and tool.outputSchema["properties"]
        hints = tool.annotations
        assert hints.readOnlyHint is (tool.name in READ_ONLY)
        assert hints.destructiveHint is (tool.name == "cancel_training")
        assert hints.idempotentHint is True and hints.openWorldHint is False
    start = tools["start_training"].inputSchema
    assert start["required"] == ["project_id"]
    assert set(start["properties"]) == {
        "project_id",
        "model",
        "epochs",
        "learning_rate",
        "batch_size",
        "gpus",
        "nodes",
    }
    assert maximum_of(start["properties"]["epochs"]) == settings.max_epochs
    assert maximum_of(start["properties"]["batch_size"]) == settings.max_batch_size
    assert maximum_of(start["properties"]["gpus"]) == settings.max_gpus_per_node
    assert maximum_of(start["properties"]["nodes"]) == settings.max_nodes
    assert set(enum_of(start["properties"]["model"])) == set(SUPPORTED_MODELS)
    status = tools["get_training_status"].inputSchema["properties"]
    assert maximum_of(status["logs"]) == settings.status_logs_max
    assert tools["wait_for_training"].inputSchema["properties"]["timeout_seconds"]["maximum"] > 0
    assert tools["cancel_training"].inputSchema["properties"]["confirm"]["type"] == "boolean"
    assert {"finished", "status", "progress", "model_url"} <= set(
        tools["wait_for_training"].outputSchema["properties"]
    )


def maximum_of(field: dict[str, Any]) -> int | None:
    return next((b["maximum"] for b in field.get("anyOf", [field]) if "maximum" in b), None)


def enum_of(field: dict[str, Any]) -> list[str]:
    return next(b["enum"] for b in field.get("anyOf", [field]) if "enum" in b)


# -- a real training, followed to the end ----------------------------------------------------
@pytest.fixture
def training_url(database_url, tmp_path, store) -> Iterator[tuple[str, Any]]:
    """The API with the real trainer behind the local launcher."""
    settings = make_settings(
        database_url, tmp_path, scratch_dir=tmp_path / "scratch", min_free_disk_bytes=0
    )
    launcher = LocalLauncher(settings, store, grace_seconds=20, poll_seconds=0.1)
    try:
        with serving(create_app(settings, store, launcher)) as url:
            yield url, settings
    finally:
        launcher.close()


@pytest.fixture
def digits_project(training_url, project_factory, digits_zip, tmp_path):
    """The digits dataset (16 px, 150 images) in the bucket, and a project that trains it
    in seconds: resnet18 from scratch, 2 epochs."""
    target = tmp_path / "bucket" / "raw" / "digits.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(digits_zip(image_size=16, limit=150), target)
    metadata = {
        "model": "resnet18",
        "epochs": 2,
        "image_size": 16,
        "batch_size": 32,
        "pretrained": False,
        "num_classes": 10,
        "seed": 0,
    }
    return project_factory("digits", dataset=f"file://{target}", metadata=metadata)


@pytest.mark.slow
def test_a_training_started_and_followed_over_mcp_ends_with_a_model(
    training_url, digits_project, store, caplog
):
    url, _ = training_url
    project_id = str(digits_project.id)
    notices: list[tuple[float, float | None, str | None]] = []

    async def follow(session: ClientSession):
        async def on_progress(progress: float, total: float | None, message: str | None):
            notices.append((progress, total, message))

        checked = answer_of(await session.call_tool("check_dataset", {"project_id": project_id}))
        started = answer_of(await session.call_tool("start_training", {"project_id": project_id}))
        waited = answer_of(
            await session.call_tool(
                "wait_for_training",
                {"project_id": project_id, "timeout_seconds": 240},
                progress_callback=on_progress,
            )
        )
        models = answer_of(await session.call_tool("list_models", {"project_id": project_id}))
        runs = answer_of(await session.call_tool("list_training_runs", {"project_id": project_id}))
        metrics = answer_of(
            await session.call_tool("get_model_metrics", {"project_id": project_id})
        )
        return checked, started, waited, models, runs, metrics

    with caplog.at_level(logging.INFO, logger="training_api"):
        checked, started, waited, models, runs, metrics = with_session(f"{url}/mcp", follow)

    assert checked["valid"] is True and checked["problem"] is None
    assert len(checked["classes"]) == 10 and {"train", "val"} <= set(checked["splits"])
    assert started["created"] is True and started["status"] == "queued"
    assert waited["finished"] is True
    assert waited["status"] == "succeeded", waited["run"]["error"]
    assert waited["project_status"] == "trained"
    assert waited["model_url"] == started["model_url"]
    assert waited["progress"]["epoch"] == waited["progress"]["total_epochs"] == 2
    assert [epoch["epoch"] for epoch in waited["history"]] == [1, 2]
    assert metrics["run_id"] == started["run_id"] and metrics["classes"] == checked["classes"]
    assert len(metrics["confusion_matrix"]) == 10 and metrics["history"] == waited["history"]
    # Progress reached the client as the run went: epochs of the total, with loss and accuracy.
    assert notices and notices[-1][:2] == (2, 2)
    assert [n[0] for n in notices] == sorted(n[0] for n in notices)
    epoch_lines = [m for _, _, m in notices if m and "epoch" in m]
    assert any("loss" in m and "val accuracy" in m for m in epoch_lines), notices
    assert notices[-1][2].startswith("succeeded")
    assert [m["model_url"] for m in models["models"]] == [started["model_url"]]
    assert models["models"][0]["run_id"] == started["run_id"]
    assert [(r["id"], r["phase"]) for r in runs["runs"]] == [(started["run_id"], "Succeeded")]
    assert [m.gcs_url for m in store.get_models(digits_project.id)] == [started["model_url"]]
    # Each call is logged (who, what, outcome; never the token) and counted in /metrics.
    assert "MCP tool wait_for_training by token-0: ok" in caplog.text
    assert TOKEN not in caplog.text
    metrics = httpx.get(f"{url}/metrics", headers=AUTH).text
    assert 'training_api_mcp_tool_calls_total{outcome="ok",tool="start_training"} 1.0' in metrics


# -- idempotence under concurrency -----------------------------------------------------------
def test_twenty_concurrent_starts_make_exactly_one_run(mcp_url, project_factory, store):
    project = project_factory()
    results: list[dict[str, Any]] = []

    async def start_twenty(session: ClientSession):
        async def one():
            result = await session.call_tool("start_training", {"project_id": str(project.id)})
            results.append(answer_of(result))

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(one)

    with_session(mcp_url, start_twenty)

    assert len(results) == 20
    assert [r["created"] for r in results].count(True) == 1
    assert len({r["run_id"] for r in results}) == 1
    assert [str(run.id) for run in store.list_runs(project.id)] == [results[0]["run_id"]]
    assert store.get_project(project.id).status == "training"


# -- authentication --------------------------------------------------------------------------
@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["no token", "wrong token"])
def test_a_call_without_a_valid_token_is_refused_and_runs_nothing(
    mcp_url, project_factory, store, token
):
    project = project_factory()
    start = jsonrpc(
        "tools/call", {"name": "start_training", "arguments": {"project_id": str(project.id)}}
    )

    refused = raw_post(mcp_url, start, token)
    initialize = raw_post(mcp_url, jsonrpc("initialize", {}), token)

    for response in (refused, initialize):
        assert response.status_code == 401
        assert error_of(response)["code"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
    with pytest.raises(Exception) as raised:  # the official client gives up at initialize
        anyio.run(lambda: _initialize_only(mcp_url, token))
    assert "401" in repr(raised.value) or "Unauthorized" in repr(raised.value)
    assert store.list_runs(project.id) == []
    assert store.get_project(project.id).status == "pending_training"


async def _initialize_only(url: str, token: str | None) -> None:
    with anyio.fail_after(20):
        async with mcp_session(url, token):
            pass


def test_a_valid_token_passes_and_get_is_not_offered(mcp_url):
    listed = raw_post(mcp_url, jsonrpc("tools/list", {}), TOKEN)
    streamed = httpx.get(mcp_url, headers={**AUTH, "Accept": "text/event-stream"})

    assert listed.status_code == 200
    assert "start_training" in listed.text
    assert streamed.status_code == 405 and error_of(streamed)["code"] == "method_not_allowed"


def test_starts_over_mcp_and_http_share_one_rate_limit(
    database_url, tmp_path, store, idle_launcher, project_factory
):
    limited_settings = make_settings(database_url, tmp_path, rate_limit_per_minute=2)
    project_id = str(project_factory().id)

    with serving(create_app(limited_settings, store, idle_launcher)) as base:
        over_http = httpx.post(
            f"{base}/agents/training/start", json={"project_id": project_id}, headers=AUTH
        )
        second = call(f"{base}/mcp", "start_training", project_id=project_id)
        third = call(f"{base}/mcp", "start_training", project_id=project_id)
        read = call(f"{base}/mcp", "get_training_status", project_id=project_id)

    assert over_http.status_code == 202
    assert answer_of(second)["created"] is False
    assert refusal_of(third)["code"] == "rate_limited"
    assert "retry in" in refusal_of(third)["message"]
    assert answer_of(read)["run"]["id"] == over_http.json()["run_id"]  # reads are not limited


# -- cancel ----------------------------------------------------------------------------------
def test_cancel_needs_confirm_and_then_cancels(mcp_url, project_factory, store):
    project_id = str(project_factory().id)

    async def scenario(session: ClientSession):
        started = answer_of(await session.call_tool("start_training", {"project_id": project_id}))
        unconfirmed = await session.call_tool("cancel_training", {"project_id": project_id})
        still = answer_of(
            await session.call_tool("get_training_status", {"project_id": project_id})
        )
        confirmed = await session.call_tool(
            "cancel_training", {"project_id": project_id, "confirm": True}
        )
        again = await session.call_tool(
            "cancel_training", {"project_id": project_id, "confirm": True}
        )
        return started, unconfirmed, still, confirmed, again

    started, unconfirmed, still, confirmed, again = with_session(mcp_url, scenario)

    assert refusal_of(unconfirmed)["code"] == "confirmation_required"
    assert "confirm: true" in refusal_of(unconfirmed)["message"]
    assert still["status"] in ("queued", "pending", "running")  # the run went on
    assert answer_of(confirmed) == {
        "success": True,
        "run_id": started["run_id"],
        "status": "cancelled",
        "project_status": "pending_training",
        "message": f"training run {started['run_name']} cancelled",
    }
    assert refusal_of(again)["code"] == "no_active_run"
    assert store.get_run(UUID(started["run_id"])).phase is Phase.CANCELLED


# -- bad input: the HTTP API's codes and messages --------------------------------------------
BAD_STARTS = [
    ({"project_id": "not-a-uuid"}, "invalid_project_id"),
    ({"project_id": "{project}", "model": "alexnet"}, "validation_error"),
    ({"project_id": "{project}", "epochs": 10_000}, "invalid_parameter"),
    ({"project_id": "{project}", "epochs": 0}, "validation_error"),
    ({"project_id": "{project}", "color": "blue"}, "validation_error"),
    ({"project_id": 42}, "validation_error"),
    ({}, "validation_error"),
    ({"project_id": "00000000-0000-4000-8000-000000000000"}, "project_not_found"),
]


@pytest.mark.parametrize(("arguments", "code"), BAD_STARTS, ids=[c for _, c in BAD_STARTS])
def test_bad_start_input_is_a_tool_error_with_the_http_apis_code(
    base_url, project_factory, store, arguments, code
):
    project = project_factory()
    arguments = {
        key: str(project.id) if value == "{project}" else value for key, value in arguments.items()
    }

    tool_error = refusal_of(call(f"{base_url}/mcp", "start_training", **arguments))
    http_error = error_of(
        httpx.post(f"{base_url}/agents/training/start", json=arguments, headers=AUTH)
    )

    assert tool_error["code"] == code
    assert tool_error["code"] == http_error["code"]
    if code != "validation_error":  # the same words too (a schema error names its location)
        assert tool_error["message"] == http_error["message"]
    assert store.list_runs(project.id) == []


def test_other_tools_refuse_bad_input_with_the_apis_codes(mcp_url, project_factory, settings):
    project_id = str(project_factory().id)

    async def calls(session: ClientSession):
        return [
            await session.call_tool(name, arguments)
            for name, arguments in [
                ("get_training_status", {"project_id": "nope"}),
                (
                    "get_training_status",
                    {"project_id": project_id, "logs": settings.status_logs_max + 1},
                ),
                ("wait_for_training", {"project_id": project_id, "timeout_seconds": 1}),
                ("wait_for_training", {"project_id": project_id, "timeout_seconds": 10**6}),
                ("cancel_training", {"project_id": project_id, "confirm": "yes"}),
                ("list_training_runs", {"project_id": project_id, "limit": 0}),
                ("list_models", {"project_id": "00000000-0000-4000-8000-000000000000"}),
                ("get_model_metrics", {"project_id": project_id}),
                ("no_such_tool", {}),
            ]
        ]

    codes = [refusal_of(result)["code"] for result in with_session(mcp_url, calls)]

    assert codes == [
        "invalid_project_id",
        "invalid_parameter",
        "no_active_run",  # nothing was started: nothing to wait for
        "validation_error",
        "validation_error",
        "validation_error",
        "project_not_found",
        "metrics_not_found",  # no run, so no model yet
        "unknown_tool",
    ]


def test_reads_answer_for_a_project_that_never_trained(mcp_url, project_factory):
    project_id = str(project_factory().id)

    async def reads(session: ClientSession):
        names = ["get_training_status", "list_training_runs", "list_models", "check_dataset"]
        answers = [answer_of(await session.call_tool(n, {"project_id": project_id})) for n in names]
        return answers + [answer_of(await session.call_tool("list_supported_models", {}))]

    status, runs, models, checked, supported = with_session(mcp_url, reads)

    assert status["status"] == "not_started" and status["run"] is None
    assert runs["runs"] == [] and models["models"] == []
    assert checked["valid"] is False and "not found" in checked["problem"]
    assert (
        supported["models"] == list(SUPPORTED_MODELS)
        and supported["default_model"] in SUPPORTED_MODELS
    )


# -- fuzzing the input schemas ---------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=5,
)


def value_for(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values a JSON schema accepts, for the small subset the tools' inputs use."""
    if "anyOf" in schema:
        return st.one_of([value_for(branch) for branch in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        low, high = schema.get("exclusiveMinimum", -1e9), schema.get("exclusiveMaximum", 1e9)
        return st.floats(low, high, exclude_min=True, exclude_max=True)
    if kind == "string" and schema.get("format") == "uuid":
        return st.one_of(st.uuids().map(str), st.uuids().map(str), st.text(max_size=50))
    if kind == "string":
        return st.text(max_size=schema.get("maxLength", 50))
    return JSON_VALUES


def arguments_for(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Valid arguments, or ones broken on purpose: a wrong type, a missing or an extra key."""
    properties = schema.get("properties", {})
    required = set(schema.get("required", []))

    @st.composite
    def draw(draw_: Callable[..., Any]) -> dict[str, Any]:
        arguments = {
            name: draw_(value_for(field))
            for name, field in properties.items()
            if name in required or draw_(st.booleans())
        }
        mutation = draw_(st.sampled_from(["none", "none", "wrong type", "drop", "extra"]))
        if mutation == "wrong type" and properties:
            arguments[draw_(st.sampled_from(sorted(properties)))] = draw_(JSON_VALUES)
        elif mutation == "drop" and arguments:
            arguments.pop(draw_(st.sampled_from(sorted(arguments))))
        elif mutation == "extra":
            arguments[draw_(st.text(min_size=1, max_size=8))] = draw_(JSON_VALUES)
        return arguments

    return draw()


def aimed_at(tool: str, arguments: dict[str, Any], project_id: str) -> dict[str, Any]:
    """A well-formed id becomes the real project's, so fuzzing reaches past "not found";
    a wait lasts a second at most (its default is minutes)."""
    aimed = dict(arguments)
    if isinstance(aimed.get("project_id"), str) and _is_uuid(aimed["project_id"]):
        aimed["project_id"] = project_id
    timeout = aimed.get("timeout_seconds", 1)
    if tool == "wait_for_training" and type(timeout) in (int, float):
        aimed["timeout_seconds"] = min(timeout, 1)
    return aimed


def _is_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True


def fuzz(portal, session: ClientSession, name: str, schema: dict, project_id: str) -> set[str]:
    """Call one tool with generated arguments; the outcomes seen ("ok" or error codes)."""
    outcomes: set[str] = set()

    @given(arguments=arguments_for(schema))
    @hypothesis_settings(
        max_examples=40,
        deadline=None,
        derandomize=True,  # the same examples on every run: a failure is reproducible
        suppress_health_check=list(HealthCheck),
    )
    def answers(arguments: dict[str, Any]) -> None:
        result = portal.call(session.call_tool, name, aimed_at(name, arguments, project_id))
        outcome = refusal_of(result)["code"] if result.isError else "ok"
        assert outcome != "internal_error", (name, arguments, result.content)
        outcomes.add(outcome)

    answers()
    return outcomes


def test_fuzzed_inputs_get_answers_or_tool_errors_never_a_server_error(
    base_url, project_factory, store
):
    mcp_url = f"{base_url}/mcp"
    project_id = str(project_factory().id)
    seen: dict[str, set[str]] = {}  # the outcomes per tool: "ok" or an error code

    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(mcp_session(mcp_url)) as session,
    ):
        for tool in portal.call(session.list_tools).tools:
            seen[tool.name] = fuzz(portal, session, tool.name, tool.inputSchema, project_id)

    assert set(seen) == TOOLS
    # The project never trained: its model metrics are refused (tested where a run succeeds).
    answered = {name: outcomes for name, outcomes in seen.items() if name != "get_model_metrics"}
    assert all("ok" in outcomes for outcomes in answered.values()), sorted(seen.items())
    assert "metrics_not_found" in seen["get_model_metrics"]
    assert all("validation_error" in seen[name] for name in TOOLS - {"list_supported_models"})
    assert httpx.get(f"{base_url}/health").status_code == 200  # the server stays up
    assert len(store.list_active_runs()) <= 1
    metrics = httpx.get(f"{base_url}/metrics", headers=AUTH).text
    assert "training_api_mcp_tool_calls_total" in metrics
    assert 'outcome="internal_error"' not in metrics
