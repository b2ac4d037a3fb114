"""Every algorithm's meta-gradient against an independent plain-autograd reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from meta_core.registry import ALGORITHMS, MODELS
from meta_core.tasks import ClassificationTasks, SinusoidTasks, task_rng

STEPS, LR = 2, 0.05


def regression_setup():
    model = MODELS["mlp"].make((1,), 1)
    task = SinusoidTasks(shots=10, queries=10).sample(task_rng(0, 0, 0, 0))
    return model, "regression", task


def classification_setup():
    model = MODELS["conv4"].make((28, 28), 3, width=8)
    images = np.random.default_rng(0).random((6, 5, 28, 28), dtype=np.float32)
    task = ClassificationTasks(images, ways=3, shots=1, queries=2).sample(task_rng(0, 0, 0, 0))
    return model, "classification", task


SETUPS = [regression_setup, classification_setup]


def loss_fn(kind, out, y):
    return F.mse_loss(out, y) if kind == "regression" else F.cross_entropy(out, y)


def reference_grad(model, kind, params, task, first_order=False, adapt=lambda name: True, learned_lrs=False):
    """Unrolled inner loop with torch.autograd.grad, written independently of meta_core."""
    theta = {k: v.clone().requires_grad_() for k, v in params.items()}
    weights = {k: v for k, v in theta.items() if not k.startswith("lr.")}
    names = [k for k in weights if adapt(k)]
    for _ in range(STEPS):
        loss = loss_fn(kind, functional_call(model, weights, (task.support_x,)), task.support_y)
        grads = torch.autograd.grad(loss, [weights[k] for k in names], create_graph=not first_order)
        for k, g in zip(names, grads, strict=True):
            lr = theta[f"lr.{k}"] if learned_lrs else LR
            weights[k] = weights[k] - lr * g
    query = loss_fn(kind, functional_call(model, weights, (task.query_x,)), task.query_y)
    return dict(zip(theta, torch.autograd.grad(query, list(theta.values())), strict=True))


def ours(name, setup):
    model, kind, task = setup()
    algo = ALGORITHMS[name].make(model, kind, inner_steps=STEPS, inner_lr=LR)
    params = algo.initial_params(1)
    grads, metrics = algo.task_gradient(params, task)
    return model, kind, task, params, grads, metrics


def assert_close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.parametrize("setup", SETUPS)
def test_maml_matches_unrolled_second_order_reference(setup):
    model, kind, task, params, grads, metrics = ours("maml", setup)
    assert_close(grads, reference_grad(model, kind, params, task))
    assert metrics["meta_loss"] == metrics["post_adapt_loss"]


@pytest.mark.parametrize("setup", SETUPS)
def test_first_order_maml_matches_reference_and_differs_from_second_order(setup):
    model, kind, task, params, grads, _ = ours("fomaml", setup)
    assert_close(grads, reference_grad(model, kind, params, task, first_order=True))
    second = reference_grad(model, kind, params, task)
    assert max((grads[k] - second[k]).abs().max().item() for k in grads) > 1e-4


@pytest.mark.parametrize("setup", SETUPS)
def test_metasgd_matches_reference_and_learns_its_learning_rates(setup):
    model, kind, task, params, grads, _ = ours("metasgd", setup)
    assert {k for k in params if k.startswith("lr.")} == {f"lr.{k}" for k, _ in model.named_parameters()}
    assert_close(grads, reference_grad(model, kind, params, task, learned_lrs=True))
    assert all(grads[k].abs().sum() > 0 for k in grads if k.startswith("lr."))


@pytest.mark.parametrize("setup", SETUPS)
def test_anil_adapts_only_the_head(setup):
    model, kind, task, params, grads, _ = ours("anil", setup)
    assert_close(grads, reference_grad(model, kind, params, task, adapt=lambda k: k.startswith("head.")))


@pytest.mark.parametrize("setup", SETUPS)
def test_reptile_direction_is_theta_minus_adapted_weights(setup):
    model, kind, task, params, grads, _ = ours("reptile", setup)
    weights = {k: v.clone().requires_grad_() for k, v in params.items()}
    for _ in range(STEPS):
        loss = loss_fn(kind, functional_call(model, weights, (task.support_x,)), task.support_y)
        g = torch.autograd.grad(loss, list(weights.values()))
        weights = {k: (w - LR * gi).detach().requires_grad_() for (k, w), gi in zip(weights.items(), g, strict=True)}
    assert_close(grads, {k: params[k] - weights[k].detach() for k in params})


def test_adaptation_lowers_support_loss_for_every_algorithm():
    for name in ["maml", "fomaml", "metasgd", "anil", "reptile"]:
        model, kind, task = regression_setup()
        algo = ALGORITHMS[name].make(model, kind, inner_steps=STEPS, inner_lr=LR)
        params = algo.initial_params(1)
        before = algo.loss(algo.weights(params), task.support_x, task.support_y)
        after = algo.loss(algo.adapt(params, task, steps=5), task.support_x, task.support_y)
        assert after < before, name
