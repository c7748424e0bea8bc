"""Several training processes on this node: torchrun's elastic agent, started by the trainer
itself so that the program keeps its exit codes (torchrun would turn every failure into 1).

``python -m trainer`` with ``TRAINING_NODES × TRAINING_PROCESSES_PER_NODE`` above one
becomes the node's agent: it starts ``python -m trainer`` once per process (each finds
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous in its environment), watches
them, and when one ends badly stops the others (SIGTERM, so each stops at a batch boundary)
and exits with the group's code:

* one node: a standalone rendezvous on localhost (``torchrun --standalone``);
* several: a static rendezvous at node 0 (``TRAINING_MASTER_ADDR``/``_PORT``), this node's
  rank being its Indexed Job completion index (``JOB_COMPLETION_INDEX``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
from training_core.runspec import (
    EXIT_DO_NOT_RETRY,
    EXIT_MISCONFIGURED,
    EXIT_OK,
    EXIT_RETRY,
    Resources,
)

log = logging.getLogger("trainer")
MONITOR_SECONDS = 0.5  # how often the agent looks at its processes
# What a rank's own exit code says, strongest first: the group exits with the strongest.
_DECISIVE = (EXIT_DO_NOT_RETRY, EXIT_MISCONFIGURED)


@dataclass(frozen=True)
class GroupExit:
    code: int
    lost: str | None = None  # the process that died unexpectedly, in words


def group_exit(failures: Mapping[int, int], world_size: int) -> GroupExit:
    """The group's exit code from its failed ranks' codes (in the order the agent saw them;
    a negative code is a signal). A rank that recorded the run's failure (65) or found the
    environment unusable (2) decides; anything else — a rank killed, crashed, or stopped to
    be retried (75) — sends the group back to resume from its last checkpoint."""
    if not failures:
        return GroupExit(EXIT_OK)
    for code in _DECISIVE:
        if code in failures.values():
            return GroupExit(code)
    unexpected = [(rank, code) for rank, code in failures.items() if code != EXIT_RETRY]
    if not unexpected:
        return GroupExit(EXIT_RETRY)
    rank, code = unexpected[0]
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    return GroupExit(EXIT_RETRY, f"training process {rank} of {world_size} {how}")


def launch_config(run_id: str, resources: Resources, environ: Mapping[str, str]) -> LaunchConfig:
    nodes = resources.nodes
    if nodes == 1:
        rendezvous = {"rdzv_backend": "c10d", "rdzv_endpoint": "localhost:0"}
        configs: dict[str, object] = {}
    else:
        address = f"{environ['TRAINING_MASTER_ADDR']}:{environ['TRAINING_MASTER_PORT']}"
        rendezvous = {"rdzv_backend": "static", "rdzv_endpoint": address}
        configs = {"rank": int(environ.get("JOB_COMPLETION_INDEX", "0"))}
    return LaunchConfig(
        min_nodes=nodes,
        max_nodes=nodes,
        nproc_per_node=resources.processes_per_node,
        run_id=run_id,
        rdzv_configs=configs,
        max_restarts=0,  # the Job (or the local launcher) restarts the group from a checkpoint
        monitor_interval=MONITOR_SECONDS,
        **rendezvous,
    )


def run_group(run_id: str, resources: Resources) -> GroupExit:
    """Run this node's processes to their end; the group's exit."""
    config = launch_config(run_id, resources, os.environ)
    try:
        elastic_launch(config, sys.executable)("-m", "trainer")
    except ChildFailedError as failed:
        codes = {rank: failure.exitcode for rank, failure in failed.failures.items()}
        return group_exit(codes, resources.world_size)
    except SignalException as stopped:  # the agent's SIGTERM: its processes have stopped
        log.warning("%s received: the training processes stopped", stopped.sigval.name)
        return GroupExit(EXIT_RETRY)
    return GroupExit(EXIT_OK)
