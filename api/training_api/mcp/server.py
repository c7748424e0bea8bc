"""The MCP server: lists the tools and answers each call the way the HTTP API answers a
request: validated input, one error shape, logged and counted in ``/metrics``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import anyio
from mcp.server.lowlevel import Server
from mcp.types import CallToolResult, TextContent, Tool
from pydantic import BaseModel, ValidationError

from training_api.errors import ApiError, as_api_error, error_body, invalid_input
from training_api.mcp.tools import TOOLS, Reporter, ToolCall, ToolSpec
from training_api.metrics import ApiMetrics
from training_api.service import TrainingService

log = logging.getLogger(__name__)

NAME = "training-agent"
VERSION = "0.1.0"
INSTRUCTIONS = """Trains image classifiers (PyTorch) for the platform's projects.
A project is identified by its id (a UUID). Typical flow: check_dataset (optional),
start_training, then wait_for_training (progress notifications) or get_training_status,
then list_models for the trained model's URL. cancel_training needs confirm: true."""


def build_server(service: TrainingService, *, poll_seconds: float = 1.0) -> Server[Any, Any]:
    """A fresh server for one app (its handlers hold that app's service)."""
    server: Server[Any, Any] = Server(NAME, version=VERSION, instructions=INSTRUCTIONS)
    tools = {spec.name: spec for spec in TOOLS}
    listing = [spec.listing(service.settings) for spec in TOOLS]
    dataset_checks = anyio.CapacityLimiter(1)  # one archive downloaded and decoded at a time

    @server.list_tools()
    async def list_tools() -> list[Tool]:
        return listing

    # The input models validate (with the API's codes), not the SDK's generic check.
    @server.call_tool(validate_input=False)
    async def call_tool(name: str, arguments: dict[str, Any]) -> CallToolResult:
        context = server.request_context
        request = context.request
        call = ToolCall(
            service=service,
            request=request,
            client=request.state.client,
            report_progress=_reporter(context),
            dataset_checks=dataset_checks,
            poll_seconds=poll_seconds,
        )
        return await answer(call, tools.get(name), name, arguments, service.metrics)

    return server


async def answer(
    call: ToolCall,
    spec: ToolSpec | None,
    name: str,
    arguments: Mapping[str, Any],
    metrics: ApiMetrics,
) -> CallToolResult:
    """Run one tool call; every refusal (or failure) becomes a tool error, never a crash."""
    started = time.perf_counter()
    outcome = "interrupted"  # the client went away mid-call
    try:
        if spec is None:
            raise ApiError(404, "unknown_tool", f"no tool named {name!r}; list the tools")
        result = await spec.run(call, _parsed(spec.input, arguments))
        outcome = "ok"
        return _answered(result)
    except Exception as error:  # noqa: BLE001 - mapped like the HTTP error handlers map it
        refusal = as_api_error(error, f"MCP tool {name}")
        outcome = refusal.code
        return _refused(refusal)
    finally:
        seconds = time.perf_counter() - started
        tool = spec.name if spec else "unknown"  # a client's made-up names add no series
        metrics.tool_calls.labels(tool, outcome).inc()
        metrics.tool_latency.labels(tool).observe(seconds)
        log.info(
            "MCP tool %s by %s: %s in %.3f s", tool, call.client or "anonymous", outcome, seconds
        )


def _parsed(model: type[BaseModel], arguments: Mapping[str, Any]) -> BaseModel:
    try:
        return model.model_validate(arguments or {})
    except ValidationError as error:
        raise invalid_input(error) from None


def _answered(result: BaseModel) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=result.model_dump_json())],
        structuredContent=result.model_dump(mode="json"),
    )


def _refused(refusal: ApiError) -> CallToolResult:
    body = json.dumps(error_body(refusal.code, refusal.message))
    return CallToolResult(content=[TextContent(type="text", text=body)], isError=True)


def _reporter(context: Any) -> Reporter:
    """Progress notifications on the call's own response stream, when the client asked."""
    token = context.meta.progressToken if context.meta else None

    async def report(progress: float, total: float | None, message: str) -> None:
        if token is not None:
            await context.session.send_progress_notification(
                token, progress, total, message, related_request_id=str(context.request_id)
            )

    return report
