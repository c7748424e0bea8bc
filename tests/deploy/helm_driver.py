"""Runs one Helm action through helm-sdkpy, which needs Python >= 3.12 (its own venv).

Reads one JSON request on stdin, writes one JSON answer on stdout: ``{"result": …}`` or
``{"error": "<Helm's message>"}``. Only the chart tests start it (see helm.py).
"""

import asyncio
import json
import sys

import helm_sdkpy


async def run(request: dict) -> dict:
    config = helm_sdkpy.Configuration(
        namespace=request["namespace"], kubeconfig=request.get("kubeconfig")
    )
    if request["action"] == "lint":
        return await helm_sdkpy.Lint(config).run(request["chart"])
    # HELM_DRIVER=memory (set by the caller) keeps the release record out of the cluster.
    return await helm_sdkpy.Install(config).run(
        request["release"], request["chart"], values=request["values"], wait=False, timeout=60
    )


def main() -> None:
    request = json.load(sys.stdin)
    try:
        answer = {"result": asyncio.run(run(request))}
    except helm_sdkpy.HelmError as error:
        answer = {"error": str(error)}
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
