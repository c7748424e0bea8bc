from __future__ import annotations

import io

import torch
from trainer.data import CachedImages
from trainer.engine import (
    EpochResult,
    Interrupted,
    TrainConfig,
    Trainer,
    epoch_order,
    should_compile,
)
from trainer.models import create_model
from trainer.precision import Precision

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


class _Tensors(CachedImages):
    """A split held in memory already (the decoded cache, without files)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels, self.device = images, labels, CPU


def _trainer(seed: int = 7, precision: Precision = "fp32", size: int = 16) -> Trainer:
    # Two classes a network can tell apart: dark and bright images, with noise.
    labels = torch.arange(48) % 2
    noise = torch.randint(0, 100, (48, 3, size, size), generator=torch.Generator().manual_seed(0))
    images = (labels.view(-1, 1, 1, 1) * 120 + noise).to(torch.uint8)
    torch.manual_seed(seed)  # the model's initial weights
    train = _Tensors(images[:40], labels[:40])
    val = _Tensors(images[40:], labels[40:])
    config = TrainConfig(
        epochs=3, learning_rate=0.001, batch_size=4, seed=seed, compile="off",
        precision=precision, image_size=size,
    )  # fmt: skip
    return Trainer(create_model("resnet18", 2), train, 40, val, 8, 2, config, CPU)


def test_compile_only_where_it_pays() -> None:
    assert should_compile("on", CPU, 10)
    assert not should_compile("off", CUDA, 10**6)
    assert should_compile("auto", CUDA, 5000)
    assert not should_compile("auto", CUDA, 100)  # compiling would cost more than it saves
    assert not should_compile("auto", CPU, 10**6)


def test_epoch_orders_are_seeded_permutations() -> None:
    first = epoch_order(1, 1, 50)
    assert sorted(first.tolist()) == list(range(50))
    assert torch.equal(first, epoch_order(1, 1, 50))
    assert not torch.equal(first, epoch_order(1, 2, 50))
    assert not torch.equal(first, epoch_order(2, 1, 50))


def test_training_reports_each_epoch_and_learns() -> None:
    trainer = _trainer()
    seen: list[EpochResult] = []
    history = trainer.fit(seen.append)
    assert [r.epoch for r in seen] == [1, 2, 3] and history == seen
    assert all(r.images_per_second > 0 and r.train_loss > 0 for r in seen)
    assert seen[-1].train_loss < seen[0].train_loss / 4
    assert seen[-1].val_accuracy >= 0.75  # dark vs bright: well above chance
    assert trainer.eta_seconds() == 0


def test_an_interrupted_run_resumes_to_the_same_weights() -> None:
    uninterrupted = _trainer()
    uninterrupted.fit(lambda _: None)

    first = _trainer()
    batches = 0

    def stop_after_three_batches() -> bool:
        nonlocal batches
        batches += 1
        return batches > 13  # 10 batches make epoch 1; stop in the middle of epoch 2

    try:
        first.fit(lambda _: None, stop_after_three_batches)
    except Interrupted as interrupted:
        assert "stopped in epoch 2 after 3 batches" in str(interrupted)
    else:
        raise AssertionError("the stop request was ignored")
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)  # what the bucket holds

    resumed = _trainer(seed=99)  # a new process: other random state, the seed from the checkpoint
    saved.seek(0)
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    assert resumed.state.epochs_done == 1 and resumed.state.position.batches == 3
    history = resumed.fit(lambda _: None)

    assert [r.epoch for r in history] == [1, 2, 3]
    for name, value in uninterrupted.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_checkpoints_inside_an_epoch_change_nothing_and_resume_from_their_batch() -> None:
    uninterrupted = _trainer()
    uninterrupted.fit(lambda _: None)

    checkpointed = _trainer()
    batches = 0
    saved: list[bytes] = []

    def due() -> bool:
        nonlocal batches
        batches += 1
        return batches in (13, 27)  # in epochs 2 and 3

    def save() -> None:
        buffer = io.BytesIO()
        torch.save(checkpointed.state_dict(), buffer)
        saved.append(buffer.getvalue())

    checkpointed.fit(lambda _: None, checkpoint_due=due, on_checkpoint=save)
    assert len(saved) == 2
    for name, value in uninterrupted.model.state_dict().items():
        assert torch.equal(value, checkpointed.model.state_dict()[name]), name  # undisturbed

    resumed = _trainer(seed=99)  # the node was lost after the first of them
    resumed.load_state_dict(torch.load(io.BytesIO(saved[0]), weights_only=True))
    assert resumed.state.epochs_done == 1 and resumed.state.position.batches == 3
    history = resumed.fit(lambda _: None)
    assert [r.epoch for r in history] == [1, 2, 3]
    for name, value in uninterrupted.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_a_resumed_run_keeps_the_precision_it_started_with() -> None:
    uninterrupted = _trainer(precision="bf16", size=32)
    uninterrupted.fit(lambda _: None)

    first = _trainer(precision="bf16", size=32)
    batches = 0

    def stop_in_epoch_2() -> bool:
        nonlocal batches
        batches += 1
        return batches > 13

    try:
        first.fit(lambda _: None, stop_in_epoch_2)
    except Interrupted:
        pass
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    assert state["precision"] == "bf16"

    resumed = _trainer(seed=99, precision="fp32", size=32)  # PRECISION changed in between
    resumed.load_state_dict(state)
    assert str(resumed.precision) == "bf16: as the run started"
    resumed.fit(lambda _: None)
    for name, value in uninterrupted.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name

    # A checkpoint from before precision was stored: what that version used (bf16 on CUDA).
    del state["precision"]
    older = _trainer(seed=99, precision="bf16", size=32)
    older.load_state_dict(state)
    assert older.precision.precision == "fp32"
