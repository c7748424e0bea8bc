"""One logging setup: readable text by default, JSON lines on request, run and project ids bound."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from uuid import uuid4

import pytest

from training_core.logs import bind, setup_logging

RUN_ID = uuid4()
PROJECT_ID = uuid4()


@pytest.fixture
def configure() -> Iterator[Callable[..., io.StringIO]]:
    """``configure(level, fmt)`` sets logging up into a buffer; the root logger is restored after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def setup(level: str = "INFO", fmt: str = "text") -> io.StringIO:
        stream = io.StringIO()
        setup_logging(level, fmt, stream)
        return stream

    yield setup
    root.handlers[:] = handlers
    root.setLevel(level)


log = logging.getLogger("training_core.trainer")


def test_text_lines_are_readable_and_carry_the_bound_ids(configure) -> None:
    output = configure()

    log.info("dataset has %d images", 1797)
    with bind(run_id=RUN_ID, project_id=PROJECT_ID):
        log.warning("epoch 1/3 done")

    first, second = output.getvalue().splitlines()
    assert "INFO" in first and "training_core.trainer: dataset has 1797 images" in first
    assert "run_id" not in first
    assert "WARNING" in second and "epoch 1/3 done" in second
    assert f"run_id={RUN_ID}" in second and f"project_id={PROJECT_ID}" in second


def test_json_lines_parse_and_carry_the_bound_ids(configure) -> None:
    output = configure(fmt="json")

    with bind(run_id=RUN_ID, project_id=PROJECT_ID):
        log.info("uploaded model to %s", "gs://bucket/p/models/m.pth")
        try:
            raise ValueError("checksum mismatch")
        except ValueError:
            log.exception("upload failed")

    info, failure = (json.loads(line) for line in output.getvalue().splitlines())
    assert info["level"] == "info" and info["logger"] == "training_core.trainer"
    assert info["message"] == "uploaded model to gs://bucket/p/models/m.pth"
    assert (info["run_id"], info["project_id"]) == (str(RUN_ID), str(PROJECT_ID))
    assert datetime.fromisoformat(info["time"]).tzinfo is not None
    assert failure["level"] == "error" and "ValueError: checksum mismatch" in failure["exception"]


def test_bindings_nest_and_end_with_their_block(configure) -> None:
    output = configure(fmt="json")

    with bind(project_id=PROJECT_ID):
        with bind(run_id=RUN_ID, attempt=None):  # unknown values are left out
            log.info("inner")
        log.info("outer")
    log.info("after")

    inner, outer, after = (json.loads(line) for line in output.getvalue().splitlines())
    assert (inner["project_id"], inner["run_id"]) == (str(PROJECT_ID), str(RUN_ID))
    assert "attempt" not in inner
    assert outer["project_id"] == str(PROJECT_ID) and "run_id" not in outer
    assert "project_id" not in after


def test_the_level_filters_and_setting_up_again_does_not_double_lines(configure) -> None:
    output = configure()
    setup_logging("warning", "text", output)  # e.g. the CLI, then a component, both set up

    log.info("hidden")
    log.warning("shown")

    assert output.getvalue().count("shown") == 1
    assert "hidden" not in output.getvalue()
