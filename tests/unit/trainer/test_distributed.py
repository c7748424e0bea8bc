"""The rules of a group of training processes, as plain functions: which images each rank
trains, what the group exits with, and where its processes meet."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from trainer.distributed import Group
from trainer.engine import check_divides, epoch_order, rank_share
from trainer.launch import group_exit, launch_config
from training_core.errors import InvalidInput
from training_core.runspec import (
    EXIT_DO_NOT_RETRY,
    EXIT_MISCONFIGURED,
    EXIT_OK,
    EXIT_RETRY,
    Resources,
)


def _ranks(world: int) -> list[Group]:
    return [Group(rank=rank, world_size=world) for rank in range(world)]


def _global_batches(order: torch.Tensor, batch: int, world: int) -> list[list[int]]:
    """The global batches a group trains: batch i is every rank's i-th slice, in rank order."""
    per_rank = batch // world
    shares = [rank_share(order, batch, group) for group in _ranks(world)]
    batches = []
    for start in range(0, len(shares[0]), per_rank):
        batches.append([int(i) for share in shares for i in share[start : start + per_rank]])
    return batches


@pytest.mark.parametrize("size", [96, 100, 101, 97])
@pytest.mark.parametrize("world", [2, 4])
def test_every_full_global_batch_is_the_one_process_batch(size: int, world: int) -> None:
    order = epoch_order(seed=3, epoch=2, size=size)
    alone = rank_share(order, 16, Group())
    one_process = [alone[i : i + 16].tolist() for i in range(0, len(alone), 16)]

    together = _global_batches(order, 16, world)

    assert len(together) == len(one_process)  # the same steps per epoch
    for mine, theirs in zip(together[: size // 16], one_process[: size // 16], strict=True):
        assert mine == theirs  # the same images in the same step
    if size % 16 > 1:  # the partial last batch: all its images, padded from the epoch's start
        assert set(one_process[-1]) <= set(together[-1])
        assert len(together[-1]) % world == 0 and len(together[-1]) >= 2 * world


def test_the_ranks_shares_are_equal_so_they_step_together() -> None:
    order = epoch_order(seed=0, epoch=1, size=103)
    shares = [rank_share(order, 32, group) for group in _ranks(4)]
    assert len({len(share) for share in shares}) == 1
    assert set(torch.cat(shares).tolist()) == set(range(103))  # every usable image trained


def test_one_process_trains_what_it_always_trained() -> None:
    order = epoch_order(seed=0, epoch=1, size=65)  # 65 % 32 == 1: that image is left out
    assert rank_share(order, 32, Group()).tolist() == order[:64].tolist()


@pytest.mark.parametrize(("batch", "world"), [(30, 4), (4, 4), (2, 2)])
def test_a_batch_that_cannot_be_split_is_refused_with_its_numbers(batch: int, world: int) -> None:
    with pytest.raises(InvalidInput, match=f"batch_size {batch} cannot be split evenly across {world}"):
        check_divides(batch, world)


def test_one_process_takes_any_batch_of_two() -> None:
    check_divides(2, 1)
    check_divides(31, 1)


@pytest.mark.parametrize(
    ("failures", "code", "lost"),
    [
        ({}, EXIT_OK, None),
        ({1: EXIT_RETRY, 0: EXIT_RETRY}, EXIT_RETRY, None),  # an agreed stop
        ({1: -signal.SIGKILL, 0: -signal.SIGTERM}, EXIT_RETRY, "training process 1 of 2 was killed by SIGKILL"),
        ({1: 1, 0: EXIT_RETRY}, EXIT_RETRY, "training process 1 of 2 exited with code 1"),
        ({1: EXIT_DO_NOT_RETRY, 0: EXIT_RETRY}, EXIT_DO_NOT_RETRY, None),  # it recorded why
        ({0: EXIT_RETRY, 1: EXIT_MISCONFIGURED}, EXIT_MISCONFIGURED, None),
    ],
)
def test_the_group_exits_with_what_its_processes_say(
    failures: dict[int, int], code: int, lost: str | None
) -> None:
    outcome = group_exit(failures, 2)
    assert (outcome.code, outcome.lost) == (code, lost)


def test_one_node_meets_on_localhost_several_meet_at_node_zero() -> None:
    alone = launch_config("run-1", Resources(gpu_count=4), {})
    group = launch_config(
        "run-1", Resources(gpu_count=8, nodes=2),
        {"TRAINING_MASTER_ADDR": "train-1-0.train-1", "TRAINING_MASTER_PORT": "29500",
         "JOB_COMPLETION_INDEX": "1"},
    )  # fmt: skip

    assert (alone.nproc_per_node, alone.min_nodes, alone.rdzv_backend, alone.rdzv_endpoint) == (
        4, 1, "c10d", "localhost:0",
    )  # fmt: skip
    assert (group.nproc_per_node, group.min_nodes, group.max_nodes) == (8, 2, 2)
    assert (group.rdzv_backend, group.rdzv_endpoint) == ("static", "train-1-0.train-1:29500")
    assert group.rdzv_configs["rank"] == 1 and group.max_restarts == 0


# -- two real gloo processes -----------------------------------------------------------------
def _decode_in_group(rank: int, world: int, init: str, paths: list[str], out: str) -> None:
    import torch.distributed as dist
    from trainer.data import decode_together

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    group = Group(rank=rank, world_size=world, local_world_size=world)
    try:
        decode_together([Path(p) for p in paths], 8, group, threads=1)
        result = "decoded"
    except InvalidInput as error:
        result = str(error)
    (stop,) = group.agree(rank == 1)  # a stop asked on rank 1 alone is seen by both
    Path(out, f"rank{rank}").write_text(f"{result}|{stop}|{group.share(f'from {rank}')}")
    dist.destroy_process_group()


def test_an_image_one_rank_cannot_decode_is_the_same_error_on_every_rank(tmp_path: Path) -> None:
    from PIL import Image

    paths = []
    for index in range(6):
        path = tmp_path / f"{index}.png"
        Image.new("RGB", (12, 12), (index * 40, 0, 0)).save(path)
        paths.append(str(path))
    Path(paths[-1]).write_bytes(b"\x89PNG\r\n\x1a\n broken")  # in rank 1's part

    torch.multiprocessing.spawn(
        _decode_in_group, args=(2, f"file://{tmp_path / 'rendezvous'}", paths, str(tmp_path)),
        nprocs=2,
    )  # fmt: skip

    answers = {(tmp_path / f"rank{rank}").read_text() for rank in range(2)}
    [answer] = answers  # both ranks: the same error, the same stop, rank 0's value
    error, stop, shared = answer.split("|")
    assert error.startswith("cannot decode image 5.png")
    assert (stop, shared) == ("True", "from 0")
