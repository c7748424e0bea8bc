"""README.md stays true: its commands exist, its make targets exist, every setting is listed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from training_core.settings import Settings
from training_operator.config import OperatorConfig

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def commands_in_readme() -> list[list[str]]:
    """``training-agent <sub> [<sub>]`` as written in the README, first words only."""
    found = set()
    # At the start of a shell line or of a code span, as a user would type it.
    pattern = r"(?:^[ \t]*(?:\$ )?|`)training-agent ([a-z][a-z-]*(?: migrate)?)"
    for match in re.finditer(pattern, README, flags=re.MULTILINE):
        found.add(tuple(match.group(1).split()))
    return sorted(list(words) for words in found)


@pytest.mark.parametrize("words", commands_in_readme(), ids=" ".join)
def test_every_command_in_the_readme_has_help(words: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training_agent", *words, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_the_readme_names_the_commands_users_need() -> None:
    names = {" ".join(words) for words in commands_in_readme()}
    assert {"serve", "train", "operator", "demo", "check-dataset", "db migrate"} <= names


@pytest.mark.parametrize("target", sorted(set(re.findall(r"make ([a-z-]+)", README))))
def test_every_make_target_in_the_readme_exists(target: str) -> None:
    result = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "variable",
    [name.upper() for name in Settings.model_fields]
    + ["OPERATOR_" + name.upper() for name in OperatorConfig.model_fields],
)
def test_every_setting_is_documented(variable: str) -> None:
    assert f"`{variable}`" in README, f"{variable} is missing from README.md"
