"""The agent as an MCP server at ``/mcp``: the HTTP API's tokens, service and error codes."""

from training_api.mcp.endpoint import McpEndpoint, mount_mcp

__all__ = ["McpEndpoint", "mount_mcp"]
