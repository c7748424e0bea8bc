"""The Go programs the tests run (helm, a Kubernetes control plane, etcd, KWOK), built from
source through the Go module proxy into a cache outside the clone, one folder per version.

    python tools/go_tools.py build [TOOL ...]   # build what is missing (all tools by default)
    python tools/go_tools.py path TOOL BINARY   # print where a binary is (building it if need be)

The cache is ``$TRAINING_AGENT_TOOLS_DIR`` or ``~/.cache/training-agent/tools``:
``<tool>-<version>/<binary>``, the way setup-envtest keeps envtest's binaries. A binary found
in ``$KUBEBUILDER_ASSETS`` (the envtest convention) is used instead of building one.

``go install`` refuses a module whose go.mod has ``replace`` directives, and Kubernetes and etcd
replace their own sibling modules with folders that are not in the module's zip. So each tool
is built inside a writable copy of its downloaded module, where every relative replace is
pointed at the sibling's published version. Standard library only: it runs before any venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Tool:
    name: str
    module: str
    version: str
    binaries: dict[str, str]  # binary name -> package in the module
    sibling_version: str = ""  # the version its relative replaces stand for (default: version)
    version_ldflags: tuple[str, ...] = field(default=())

    @property
    def folder(self) -> str:
        return f"{self.name}-{self.version}"


KUBERNETES_VERSION = "v1.35.4"  # a release GKE's channels run
_KUBE_MINOR = KUBERNETES_VERSION.split(".")[1]
_VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")

TOOLS: dict[str, Tool] = {
    "helm": Tool("helm", "helm.sh/helm/v3", "v3.22.0", {"helm": "cmd/helm"}),
    "kubernetes": Tool(
        "kubernetes",
        "k8s.io/kubernetes",
        KUBERNETES_VERSION,
        {name: f"cmd/{name}" for name in
         ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")},
        # Each staging module (k8s.io/api, …) is published as v0.<minor>.<patch>.
        sibling_version="v0" + KUBERNETES_VERSION.removeprefix("v1"),
        # What /version reports (Helm checks the chart's kubeVersion against it).
        version_ldflags=tuple(
            f"-X {package}.{key}={value}"
            for package in _VERSION_PACKAGES
            for key, value in (("gitVersion", KUBERNETES_VERSION), ("gitMajor", "1"),
                               ("gitMinor", _KUBE_MINOR), ("gitTreeState", "clean"))
        ),
    ),
    "etcd": Tool("etcd", "go.etcd.io/etcd/server/v3", "v3.6.16", {"etcd": "."}),
    "kwok": Tool("kwok", "sigs.k8s.io/kwok", "v0.7.0", {"kwok": "cmd/kwok"}),
}


class ToolError(Exception):
    """A tool could not be built; the message says which command failed and how."""


def cache_dir() -> Path:
    configured = os.environ.get("TRAINING_AGENT_TOOLS_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "training-agent" / "tools"


def binary(tool_name: str, binary_name: str) -> Path:
    """The path of one binary, from KUBEBUILDER_ASSETS, the cache, or a build now."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and (Path(assets) / binary_name).is_file():
        return Path(assets) / binary_name
    tool = TOOLS[tool_name]
    if binary_name not in tool.binaries:
        raise ToolError(f"{tool_name} has no binary {binary_name!r}")
    return build(tool) / binary_name


def build(tool: Tool) -> Path:
    """The tool's cache folder, with every binary in it; builds it when anything is missing."""
    target = cache_dir() / tool.folder
    if all((target / name).is_file() for name in tool.binaries):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"building {tool.name} {tool.version} from {tool.module} (once per version) ...",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix=f"{tool.folder}-", dir=target.parent) as scratch:
        source = _writable_copy(tool, Path(scratch) / "src")
        out = Path(scratch) / "bin"
        out.mkdir()
        ldflags = " ".join(("-s", "-w", *tool.version_ldflags))
        packages = sorted({"./" + package for package in tool.binaries.values()})
        if len(packages) == 1:  # go build -o DIR names a main package after its folder
            command = ["go", "build", "-mod=mod", "-trimpath", f"-ldflags={ldflags}",
                       "-o", str(out / next(iter(tool.binaries))), packages[0]]
        else:
            command = ["go", "build", "-mod=mod", "-trimpath", f"-ldflags={ldflags}",
                       "-o", str(out) + "/", *packages]
        _go(command, cwd=source)
        # Publish the folder whole, so a build killed half-way leaves nothing behind.
        staged = Path(scratch) / tool.folder
        out.rename(staged)
        shutil.rmtree(target, ignore_errors=True)
        staged.rename(target)
    return target


def _writable_copy(tool: Tool, into: Path) -> Path:
    downloaded = json.loads(_go(["go", "mod", "download", "-json", f"{tool.module}@{tool.version}"]))
    shutil.copytree(downloaded["Dir"], into, ignore=shutil.ignore_patterns("vendor", "go.work*"))
    for path in [into, *into.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)
    edit = json.loads(_go(["go", "mod", "edit", "-json"], cwd=into))
    required = {item["Path"] for item in edit.get("Require") or []}
    sibling = tool.sibling_version or tool.version
    for replace in edit.get("Replace") or []:
        module, target = replace["Old"]["Path"], replace["New"]["Path"]
        if not target.startswith((".", "/")):
            continue  # already a published module
        change = (f"-replace={module}={module}@{sibling}" if module in required
                  else f"-dropreplace={module}")  # a guard for a module nobody requires
        _go(["go", "mod", "edit", change], cwd=into)
    return into


def _go(command: list[str], cwd: Path | None = None) -> str:
    env = {**os.environ, "GOWORK": "off", "GOFLAGS": "", "CGO_ENABLED": "0"}
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    except FileNotFoundError as missing:
        raise ToolError("Go is needed to build the test tools (go 1.26: `go version`)") from missing
    if done.returncode != 0:
        raise ToolError(f"`{' '.join(command)}` failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["build"]:
            for name in argv[1:] or list(TOOLS):
                print(build(TOOLS[name]))
            return 0
        if argv[:1] == ["path"] and len(argv) == 3:
            print(binary(argv[1], argv[2]))
            return 0
    except (ToolError, KeyError) as error:
        print(f"go_tools: {error}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
