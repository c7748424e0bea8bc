"""The three Dockerfiles: lint-clean, they copy only files that exist and that the build
context holds, the slim images carry no torch, every image ends as a numeric non-root user,
and the trainer image bakes the weights of every supported model."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from training_core.runspec import SUPPORTED_MODELS

REPO = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).with_name("hadolint")
DOCKERFILES = {
    "api": REPO / "api" / "Dockerfile",
    "operator": REPO / "operator" / "Dockerfile",
    "trainer": REPO / "trainer_image" / "Dockerfile",
}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    heredoc: str = ""


def parse(dockerfile: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and heredoc bodies attached."""
    instructions: list[Instruction] = []
    lines = iter(dockerfile.read_text().splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        keyword, _, arguments = line.strip().partition(" ")
        body = ""
        if marker := re.search(r"<<-?'?\"?(\w+)", arguments):
            body = "\n".join(iter(lambda: next(lines), marker.group(1))) + "\n"
        instructions.append(Instruction(keyword.upper(), arguments.strip(), body))
    return instructions


def copy_sources(instructions: list[Instruction]) -> list[str]:
    """Sources of COPY instructions that read the build context (not another stage)."""
    sources = []
    for item in instructions:
        if item.keyword != "COPY" or "--from=" in item.arguments:
            continue
        words = [w for w in shlex.split(item.arguments) if not w.startswith("--")]
        sources += words[:-1]
    return sources


def env_value(instructions: list[Instruction], name: str) -> str | None:
    found = None
    for item in instructions:
        if item.keyword == "ENV":
            for pair in shlex.split(item.arguments):
                key, _, value = pair.partition("=")
                if key == name:
                    found = value
    return found


def dockerignore_includes(path: str) -> bool:
    """Docker's rule: the last .dockerignore pattern that matches a path (or a parent) wins."""
    included = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        regex = re.escape(pattern.lstrip("!")).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            included = negate
    return included


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name: str) -> None:
    done = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILES[name])], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copied_files_exist_and_are_in_the_build_context(name: str) -> None:
    sources = copy_sources(parse(DOCKERFILES[name]))
    assert sources
    for source in sources:
        path = REPO / source
        assert path.exists(), f"{name}: COPY {source}: no such file"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        assert files, f"{name}: COPY {source}: an empty folder"
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            assert dockerignore_includes(relative), f"{name}: .dockerignore leaves out {relative}"


def test_dockerignore_keeps_secrets_and_caches_out() -> None:
    for path in [".env", ".venv/bin/python", "tests/conftest.py", ".git/config",
                 "core/training_core/__pycache__/settings.cpython-311.pyc", ".local/state.db"]:
        assert not dockerignore_includes(path), path


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_run_as_a_numeric_non_root_user(name: str) -> None:
    users = [item.arguments for item in parse(DOCKERFILES[name]) if item.keyword == "USER"]
    assert users, f"{name}: no USER: the container would run as root"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can check it without a passwd file.
    assert uid.isdigit() and int(uid) > 0 and (not gid or (gid.isdigit() and int(gid) > 0)), users[-1]


@pytest.mark.parametrize(("name", "entrypoint"), [
    ("api", ["training-agent"]), ("operator", ["training-agent"]), ("trainer", ["python", "-m", "trainer"]),
])
def test_entrypoints_name_programs_the_image_installs(name: str, entrypoint: list[str]) -> None:
    instructions = parse(DOCKERFILES[name])
    [declared] = [json.loads(i.arguments) for i in instructions if i.keyword == "ENTRYPOINT"]
    assert declared == entrypoint
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    if entrypoint == ["training-agent"]:
        assert "training-agent" in project["scripts"]
        [command] = [json.loads(i.arguments) for i in instructions if i.keyword == "CMD"]
        assert command[0] == {"api": "serve", "operator": "operator"}[name]
    else:
        assert importlib.util.find_spec("trainer.__main__") is not None


def _extra_requirements(extra: str) -> set[str]:
    """Every requirement an extra pulls in, following self-references (training-agent[x])."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names: set[str] = set()
    for requirement in project["optional-dependencies"][extra]:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()
        if name == project["name"]:
            for inner in re.search(r"\[(.*)\]", requirement).group(1).split(","):
                names |= _extra_requirements(inner.strip())
        else:
            names.add(name)
    return names


@pytest.mark.parametrize("name", ["api", "operator"])
def test_slim_images_install_their_extra_only_and_no_torch(name: str) -> None:
    instructions = parse(DOCKERFILES[name])
    installs = [item.arguments for item in instructions if item.keyword == "RUN" and "pip install" in item.arguments]
    assert len(installs) == 1 and installs[0].endswith(f'"/src[{name}]"'), installs
    assert "torch" not in _extra_requirements(name) and "torchvision" not in _extra_requirements(name)
    # Every stage starts from the one slim Python 3.11 base.
    assert [i.arguments for i in instructions if i.keyword == "ARG"] == ["PYTHON_IMAGE=python:3.11-slim-bookworm"]
    assert all(i.arguments.startswith("${PYTHON_IMAGE}") for i in instructions if i.keyword == "FROM")


@pytest.mark.parametrize("name", ["api", "operator"])
def test_images_ship_the_migrations_where_they_look(name: str) -> None:
    instructions = parse(DOCKERFILES[name])
    target = env_value(instructions, "MIGRATIONS_DIR")
    copies = [shlex.split(i.arguments) for i in instructions if i.keyword == "COPY" and "--from=" not in i.arguments]
    assert ["supabase/migrations", target] in copies
    assert sorted((REPO / "supabase" / "migrations").glob("*.sql"))


def test_trainer_keeps_the_base_images_torch() -> None:
    instructions = parse(DOCKERFILES["trainer"])
    [install] = [i.arguments for i in instructions if i.keyword == "RUN" and "pip install" in i.arguments]
    assert "--constraint /tmp/base-torch.txt" in install and '"/src[trainer]"' in install
    assert env_value(instructions, "TORCH_HOME")


# Seeds the hub cache with a tiny, valid file per model, so that the bake below downloads
# nothing (no network here) yet runs exactly as in the image build.
_SEED_CACHE = """
import pathlib, torch, torchvision
from training_core.runspec import SUPPORTED_MODELS
checkpoints = pathlib.Path(torch.hub.get_dir()) / "checkpoints"
checkpoints.mkdir(parents=True)
for name in SUPPORTED_MODELS:
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    torch.save({}, checkpoints / pathlib.Path(url).name)
"""


def test_trainer_image_bakes_weights_for_every_supported_model(tmp_path: Path) -> None:
    [bake] = [i for i in parse(DOCKERFILES["trainer"]) if i.keyword == "RUN" and i.heredoc]
    assert bake.arguments.startswith("python - <<")
    done = subprocess.run(
        [sys.executable, "-"], input=_SEED_CACHE + bake.heredoc, capture_output=True, text=True,
        check=False, env={"TORCH_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    # One line per model, each naming the file the trainer's own lookup found.
    baked = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert list(baked) == list(SUPPORTED_MODELS)
    assert all(Path(path).is_file() and str(tmp_path) in path for path in baked.values())


@pytest.mark.parametrize(("name", "packages"), [
    ("api", {"core/training_core", "api/training_api", "agent/training_agent"}),
    ("operator", {"core/training_core", "operator/training_operator", "agent/training_agent"}),
    ("trainer", {"core/training_core", "trainer_image/trainer"}),
])
def test_each_image_carries_only_the_packages_it_runs(name: str, packages: set[str]) -> None:
    copied = set(copy_sources(parse(DOCKERFILES[name])))
    every_package = {
        str(init.parent.relative_to(REPO)) for init in REPO.glob("*/*/__init__.py")
        if init.parent.parent.name not in ("tests", "benchmarks", "tools")
    }
    assert copied & every_package == packages
