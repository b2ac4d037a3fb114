"""Backbones for colour images of any size: conv4 with any channels, and ResNet-12, under every algorithm that uses them."""

import pytest
import torch

from meta_core.models import init_params
from meta_core.registry import ALGORITHMS, MODELS
from meta_core.tasks import Task, seeded_noise
from pipelines.config import ConfigError, load


def test_conv4_takes_colour_images_of_any_size():
    maml_mini_imagenet = MODELS["conv4"].make((3, 84, 84), 5, width=32)  # MAML's mini-ImageNet network
    assert maml_mini_imagenet.body[0][0].in_channels == 3 and maml_mini_imagenet.head.in_features == 32 * 5 * 5
    assert maml_mini_imagenet(torch.rand(2, 3, 84, 84)).shape == (2, 5)
    omniglot = MODELS["conv4"].make((28, 28), 5, width=64)
    assert omniglot.body[0][0].in_channels == 1 and omniglot.head.in_features == 64


def test_resnet12_is_the_metaoptnet_network():
    net = MODELS["resnet12"].make((3, 84, 84), 5, width=64)
    assert [block.convs[0].out_channels for block in net.body[:4]] == [64, 160, 320, 640]
    assert net.head.in_features == 640
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 1) == 12.4  # 12.4M, as the papers report
    small = MODELS["resnet12"].make((3, 32, 32), 5, width=4)
    assert small(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def colour_task(ways: int = 3, side: int = 16) -> Task:
    """A 3-way 1-shot task of colour images, each class one random colour pattern plus noise."""
    gen = torch.Generator().manual_seed(0)
    patterns = torch.rand(ways, 3, side, side, generator=gen)
    images = patterns.repeat_interleave(3, 0) + 0.1 * torch.randn(ways * 3, 3, side, side, generator=gen)
    labels = torch.arange(ways).repeat_interleave(3)
    support, query = torch.arange(0, ways * 3, 3), torch.tensor([i for i in range(ways * 3) if i % 3])
    return Task(images[support], labels[support], images[query], labels[query])


@pytest.mark.parametrize("model", ["resnet12", "conv4"])
@pytest.mark.parametrize("algorithm", ["protonet", "matchingnet", "maml", "fomaml", "anil", "hallucination", "metagan"])
def test_every_image_algorithm_meta_trains_a_colour_backbone(model, algorithm):
    net = MODELS[model].make((3, 16, 16), 3, width=4)
    options = {"inner_steps": 1, "inner_lr": 0.1} if ALGORITHMS[algorithm].inner_loop else {}
    algo = ALGORITHMS[algorithm].make(net, "classification", input_shape=(3, 16, 16), **options)
    params = algo.initial_params(0)
    with seeded_noise("cpu", 0, 0):
        grads, metrics = algo.task_grad(params, colour_task())
    assert grads.keys() == params.keys() and torch.isfinite(metrics["meta_loss"])
    body = [k for k in grads if k.startswith("body.") and "weight" in k]
    assert body and all(grads[k].abs().sum() > 0 for k in body)  # the meta-gradient reaches every block
    assert init_params(net, 0).keys() <= params.keys()


def test_resnet12_is_for_images_only():
    assert load("omniglot", ["model.name=resnet12", "model.width=8"]).model_spec.name == "resnet12"
    with pytest.raises(ConfigError, match="resnet12"):
        load("sinusoid", ["model.name=resnet12"])
