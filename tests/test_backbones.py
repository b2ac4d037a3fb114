"""Backbones for colour images of any size: conv4 with any channels, and ResNet-12, under every algorithm that uses them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from meta_core.models import Params, forward, init_params
from meta_core.registry import ALGORITHMS, MODELS, Learner
from meta_core.tasks import Task, seeded_noise
from pipelines.config import ConfigError, load
from tests.cluster_helpers import config, start, train


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
    algo = Learner(ALGORITHMS[algorithm], MODELS[model], "classification", (3, 16, 16), 3, 1, 0.1, {}, {"width": 4}).build()
    net = MODELS[model].make((3, 16, 16), ALGORITHMS[algorithm].head(3), width=4)
    params = algo.initial_params(0)
    with seeded_noise("cpu", 0, 0):
        grads, metrics = algo.task_gradient(params, colour_task())
    assert grads.keys() == params.keys() and torch.isfinite(metrics["meta_loss"])
    body = [k for k in grads if k.startswith("body.") and "weight" in k]
    assert body and all(grads[k].abs().sum() > 0 for k in body)  # the meta-gradient reaches every block
    assert init_params(net, 0).keys() <= params.keys()


def test_resnet12_is_for_images_only():
    assert load("omniglot", ["model.name=resnet12", "model.width=8"]).model_spec.name == "resnet12"
    with pytest.raises(ConfigError, match="resnet12"):
        load("sinusoid", ["model.name=resnet12"])


# -- ResNet-12 against a reference written from the papers' description ----------------------------------------------


def reference_resnet12(params: Params, x: torch.Tensor) -> torch.Tensor:
    """ResNet-12 in plain ``torch.nn.functional``, written from MetaOptNet's description rather than from the module:
    four blocks of three 3x3 conv-BN layers, LeakyReLU(0.1) after the first two, a 1x1 conv-BN shortcut added to the
    third, then LeakyReLU(0.1) and a 2x2 max-pool; a global average pool and a linear head. Batch norm normalises
    with the batch's own statistics and keeps none."""

    def conv_bn(x, conv: str, bn: str, padding: int):
        x = F.conv2d(x, params[f"{conv}.weight"], padding=padding)
        return F.batch_norm(x, None, None, params[f"{bn}.weight"], params[f"{bn}.bias"], training=True)

    for block in (f"body.{i}" for i in range(4)):
        h = F.leaky_relu(conv_bn(x, f"{block}.convs.0", f"{block}.convs.1", 1), 0.1)
        h = F.leaky_relu(conv_bn(h, f"{block}.convs.3", f"{block}.convs.4", 1), 0.1)
        h = conv_bn(h, f"{block}.convs.6", f"{block}.convs.7", 1) + conv_bn(x, f"{block}.shortcut.0", f"{block}.shortcut.1", 0)
        x = F.max_pool2d(F.leaky_relu(h, 0.1), 2)
    return F.linear(x.mean((2, 3)), params["head.weight"], params["head.bias"])


def reference_maml_gradient(params: Params, task: Task, steps: int, lr: float) -> tuple[Params, torch.Tensor]:
    """Second-order MAML with plain autograd over ``reference_resnet12``: ``steps`` SGD steps on the support set's mean
    cross-entropy, then the gradient of the query set's mean cross-entropy w.r.t. the initial weights; and that loss."""
    initial = {k: p.detach().requires_grad_() for k, p in params.items()}
    weights = initial
    for _ in range(steps):
        support_loss = F.cross_entropy(reference_resnet12(weights, task.support_x), task.support_y)
        grads = torch.autograd.grad(support_loss, list(weights.values()), create_graph=True)
        weights = {k: w - lr * g for (k, w), g in zip(weights.items(), grads, strict=True)}
    query_loss = F.cross_entropy(reference_resnet12(weights, task.query_x), task.query_y)
    return dict(zip(initial, torch.autograd.grad(query_loss, list(initial.values())), strict=True)), query_loss.detach()


def perturbed_resnet12():
    """A width-4 float64 ResNet-12 for 3-way tasks of 3x20x20 images, and weights moved off their initial values:
    batch norm starts at scale 1 and shift 0, which would hide a reference that left them out."""
    net = MODELS["resnet12"].make((3, 20, 20), 3, width=4).double()
    gen = torch.Generator().manual_seed(1)
    return net, {k: p + 0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in init_params(net, 0).items()}


def test_resnet12_forward_matches_the_reference():
    """The module is the papers' network: every slope, the shortcut, and batch norm on the batch's own statistics."""
    net, params = perturbed_resnet12()
    x = torch.rand(6, 3, 20, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(forward(net, params, x), reference_resnet12(params, x), rtol=0, atol=1e-5)


def test_maml_meta_gradient_through_resnet12_matches_the_reference():
    """Second order through two inner steps, with the batch statistics of each step's own weights (a first-order
    reference misses by far more than the tolerance)."""
    net, params = perturbed_resnet12()
    task = colour_task(side=20)
    task = Task(task.support_x.double(), task.support_y, task.query_x.double(), task.query_y)
    grads, metrics = ALGORITHMS["maml"].make(net, "classification", inner_steps=2, inner_lr=0.1).task_gradient(params, task)
    expected, query_loss = reference_maml_gradient(params, task, steps=2, lr=0.1)
    torch.testing.assert_close(grads, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(metrics["meta_loss"], query_loss)
    checkpointed = ALGORITHMS["maml"].make(net, "classification", inner_steps=2, inner_lr=0.1, checkpoint_inner=True)
    torch.testing.assert_close(checkpointed.task_gradient(params, task)[0], expected, rtol=0, atol=1e-5)  # memory for time, same gradient


@pytest.mark.slow
def test_resnet12_trains_the_same_parameters_on_one_and_three_workers(ray_local, omniglot, tmp_path):
    """Batch norm on each task's own statistics: no state shared across tasks, so splitting them over workers changes
    nothing (7 tasks a step over 3 workers are shares of 3, 2 and 2, see test_aggregation)."""
    small = [*omniglot.overrides(omniglot.zips[0]), "data.rotations=false", "task.queries=2", f"data.cache_dir={tmp_path}"]
    resnet = ["model.name=resnet12", "model.width=2", "train.steps=2"]
    cfg = {w: config(*small, *resnet, f"cluster.workers={w}", name="omniglot") for w in (1, 3)}
    one, three = train(cfg[1]), train(cfg[3])
    assert not np.allclose(one, start(cfg[1])[2].numpy())  # it trained
    np.testing.assert_allclose(three, one, rtol=1e-5, atol=1e-6)
