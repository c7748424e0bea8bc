from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from trainer.models import cached_imagenet_weights, create_model, get_supported_models, head
from training_core.errors import InvalidInput
from training_core.runspec import SUPPORTED_MODELS


def test_every_supported_model_gets_a_head_for_the_dataset() -> None:
    assert get_supported_models() == list(SUPPORTED_MODELS)
    for name in SUPPORTED_MODELS:
        model = create_model(name, num_classes=3).eval()
        with torch.inference_mode():
            logits = model(torch.rand(2, 3, 64, 64))
        assert logits.shape == (2, 3), name
        assert head(model).out_features == 3


def test_an_unsupported_model_is_refused_with_the_list() -> None:
    with pytest.raises(InvalidInput) as error:
        create_model("alexnet", num_classes=3)
    assert "unsupported model 'alexnet'" in str(error.value)
    assert "resnet18, resnet34, resnet50" in str(error.value)


def test_a_single_class_is_refused() -> None:
    with pytest.raises(InvalidInput, match="at least 2 classes"):
        create_model("resnet18", num_classes=1)


def test_missing_pretrained_weights_say_how_to_fix_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: offline, nothing baked in
    with pytest.raises(InvalidInput) as error:
        create_model("resnet18", num_classes=3, weights="imagenet")
    message = str(error.value)
    assert "not available offline" in message
    assert "pretrained: false" in message
    assert "resnet18-f37072fd.pth" in message


def test_imagenet_weights_come_from_the_hub_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    imagenet_like = (
        torchvision.models.resnet18()
    )  # what the image bakes in: a 1000-class state_dict
    cache_file = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cache_file.parent.mkdir(parents=True)
    torch.save(imagenet_like.state_dict(), cache_file)
    assert cached_imagenet_weights("resnet18") == cache_file

    model = create_model("resnet18", num_classes=4, weights="imagenet")

    assert torch.equal(model.conv1.weight, imagenet_like.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, imagenet_like.layer4[1].bn2.running_var)
    assert model.fc.out_features == 4


def test_weights_from_a_state_dict_file_keep_the_backbone(tmp_path: Path) -> None:
    source = torchvision.models.mobilenet_v2()
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)

    model = create_model("mobilenet_v2", num_classes=5, weights=path)

    assert torch.equal(model.features[0][0].weight, source.features[0][0].weight)
    assert head(model).out_features == 5


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), path)
    with pytest.raises(InvalidInput, match="do not fit ResNet"):
        create_model("resnet18", num_classes=5, weights=path)


def test_a_weights_file_that_is_not_weights_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(InvalidInput, match="cannot read weights file weights.pth"):
        create_model("resnet18", num_classes=5, weights=path)
