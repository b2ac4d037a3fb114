"""iMAML, Prototypical and Matching Networks, MANN: references, learning, and a tracked distributed run."""

import re

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from meta_core.algorithms.mann import MemoryNetwork
from meta_core.models import flatten, layout_of
from meta_core.registry import ALGORITHMS, MODELS, Learner
from meta_core.step import evaluate_tasks, micro_batch_gradient
from meta_core.tasks import TEST, ClassificationTasks, Task, task_rng
from pipelines.config import ConfigError, load
from pipelines.pipeline import run

WAYS = 3
SMALL_MANN = dict(controller_size=32, memory_slots=8, memory_width=16)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and much slower on a machine whose cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def class_images(classes: int = 12, samples: int = 6, seed: int = 0) -> np.ndarray:
    """Each class a random 28x28 pattern; its samples that pattern plus noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.random((classes, 1, 28, 28), dtype=np.float32) > 0.7
    return (patterns + 0.6 * rng.standard_normal((classes, samples, 28, 28))).astype(np.float32)


def episode(shots: int = 2, queries: int = 3, index: int = 0) -> Task:
    return ClassificationTasks(class_images(), WAYS, shots, queries).sample(task_rng(0, 0, 0, index))


def learner(name: str, inner_steps: int = 0, inner_lr: float = 0.0, **options):
    """A 3-way learner of 28x28 images on conv4 of width 8, built as the pipeline builds it, and its initial parameters."""
    algo = Learner(ALGORITHMS[name], MODELS["conv4"], "classification", (28, 28), WAYS, inner_steps, inner_lr, options, {"width": 8}).build()
    return algo, algo.initial_params(1)


def logits(algo, params: dict, task: Task) -> torch.Tensor:
    """An episode learner's query logits once it has read the support set."""
    return algo.predict(algo.adapt(params, task), task.query_x)


def embed(params: dict, x: torch.Tensor) -> torch.Tensor:
    """The conv body's features, computed on a separately built network."""
    conv = MODELS["conv4"].make((28, 28), WAYS, width=8)
    body = {k.removeprefix("body."): v for k, v in params.items()}
    return functional_call(conv.body, body, (x.unsqueeze(1),)).flatten(1)


def reference_grad(params: dict, logits_fn, task: Task) -> dict:
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    loss = F.cross_entropy(logits_fn(leaves), task.query_y)
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))


def assert_grads_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_imaml_meta_gradient_is_the_exact_implicit_gradient_on_a_quadratic():
    """Linear regression: the proximal solution and d(query loss)/d(theta) in closed form."""
    rng = np.random.default_rng(0)
    x, y = (torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in ((16, 3), (16, 1)))
    task = Task(x[:8], y[:8], x[8:], y[8:])
    lam = 2.0
    algo = ALGORITHMS["imaml"].make(nn.Linear(3, 1), "regression", inner_steps=300, inner_lr=0.1, lam=lam, cg_steps=4)
    theta = {"weight": torch.tensor([[0.3, -0.2, 0.5]]), "bias": torch.tensor([0.1])}
    grads, metrics = algo.task_gradient(theta, task)

    def design(inputs):  # [x, 1], so that w = [weight, bias]
        return torch.cat([inputs, torch.ones(len(inputs), 1)], 1).double()

    xs, xq, ys, yq = design(task.support_x), design(task.query_x), task.support_y.double(), task.query_y.double()
    hessian = 2 * xs.T @ xs / len(xs)  # of the mean squared error in w = [weight, bias]
    w0 = torch.cat([theta["weight"].T, theta["bias"][:, None]]).double()
    phi = torch.linalg.solve(hessian + lam * torch.eye(4, dtype=torch.float64), 2 * xs.T @ ys / len(xs) + lam * w0)
    query_grad = 2 * xq.T @ (xq @ phi - yq) / len(xq)
    exact = torch.linalg.solve(torch.eye(4, dtype=torch.float64) + hessian / lam, query_grad).float()

    torch.testing.assert_close(grads["weight"], exact[:3].T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads["bias"], exact[3], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(metrics["post_adapt_loss"], F.mse_loss(xq @ phi, yq).float(), rtol=1e-4, atol=1e-6)
    coarse, _ = ALGORITHMS["imaml"].make(nn.Linear(3, 1), "regression", inner_steps=300, inner_lr=0.1, lam=lam, cg_steps=1).task_gradient(theta, task)
    assert (coarse["weight"] - grads["weight"]).abs().max() > 1e-3  # the conjugate-gradient steps matter


def test_prototypes_and_their_logits_match_a_direct_computation():
    algo, params = learner("protonet")
    task = episode()

    def direct(p):
        support, query = embed(p, task.support_x), embed(p, task.query_x)
        centres = torch.stack([support[task.support_y == c].mean(0) for c in range(WAYS)])
        return torch.stack([torch.stack([-((q - c) ** 2).sum() for c in centres]) for q in query])

    torch.testing.assert_close(logits(algo, params, task), direct(params), rtol=1e-4, atol=1e-4)
    grads, metrics = algo.task_gradient(params, task)
    assert_grads_close(grads, reference_grad(params, direct, task))
    assert metrics["pre_adapt_loss"] == metrics["post_adapt_loss"] == metrics["meta_loss"]


def test_matching_attention_matches_a_direct_computation():
    algo, params = learner("matchingnet")
    task = episode()

    def direct(p):
        support, query = embed(p, task.support_x), embed(p, task.query_x)
        rows = []
        for q in query:
            weights = torch.stack([F.cosine_similarity(q, s, dim=0) for s in support]).softmax(0)
            rows.append(torch.stack([weights[task.support_y == c].sum() for c in range(WAYS)]))
        return torch.stack(rows).log()

    torch.testing.assert_close(logits(algo, params, task), direct(params), rtol=1e-4, atol=1e-5)
    assert_grads_close(algo.task_gradient(params, task)[0], reference_grad(params, direct, task))


def test_mann_writes_each_new_key_to_the_least_used_slot():
    """With the write gate shut (all writes to the least-used slot) every step fills a fresh slot."""
    network = MemoryNetwork(nn.Identity(), features=4, ways=2, controller=6, slots=5, width=3)
    nn.init.constant_(network.write_gate.bias, -50.0)
    state, keys = network.initial(torch.zeros(1)), []
    for _ in range(4):
        _, state = network.step(torch.randn(1, 4), torch.zeros(1, 2), state)
        keys.append(network.key(state.hidden).tanh()[0])
    written = state.memory[0]
    for t, key in enumerate(keys):
        torch.testing.assert_close(written[t], key, rtol=1e-5, atol=1e-5)
    assert written[4].abs().max() < 1e-6  # never written


def test_episode_learners_report_the_same_metrics_at_every_step_count():
    algo, params = learner("mann", **SMALL_MANN)
    metrics = algo.evaluate_task(params, episode(), [1, 3])
    assert set(metrics) == {f"steps{n}_{m}" for n in (0, 1, 3) for m in ("loss", "acc")}
    assert metrics["steps0_loss"] == metrics["steps1_loss"] == metrics["steps3_loss"]


def meta_train(algo, params, source, steps: int, lr: float) -> dict:
    """Adam on the mean meta-gradient of 4 tasks a step, through the workers' own share function.

    Returns (before, after) held-out query metrics, after as many adaptation steps as training takes.
    """
    layout, flat = layout_of(params), flatten(params).clone()
    optimizer = torch.optim.Adam([flat], lr=lr)
    adapt = [max(1, algo.inner_steps)]
    before = evaluate_tasks(algo, source, flat, layout, 0, TEST, range(16), adapt)
    for step in range(steps):
        grad, _ = micro_batch_gradient(algo, source, flat, layout, 0, step, range(4), vectorize=False)
        flat.grad = (grad / 4).float()
        optimizer.step()
    after = evaluate_tasks(algo, source, flat, layout, 0, TEST, range(16), adapt)
    return {k.replace(f"steps{adapt[0]}", "adapted"): (before[k].mean(), after[k].mean()) for k in before}


@pytest.mark.parametrize(
    "name, options, steps, lr",
    [
        ("imaml", dict(inner_steps=5, inner_lr=0.2, lam=1.0, cg_steps=3), 25, 0.01),
        ("protonet", {}, 25, 0.01),
        ("matchingnet", {}, 25, 0.01),
        pytest.param("mann", SMALL_MANN, 200, 0.008, marks=pytest.mark.slow),
    ],
)
def test_learns_a_small_task(name, options, steps, lr):
    algo, params = learner(name, **options)
    result = meta_train(algo, params, ClassificationTasks(class_images(), WAYS, shots=2, queries=3), steps, lr)
    (loss_before, loss_after), (acc_before, acc_after) = result["adapted_loss"], result["adapted_acc"]
    assert loss_after < 0.8 * loss_before and acc_after > acc_before + 0.15, result


def small(config: str, omniglot) -> list[str]:
    common = ["train.steps=2", "train.meta_batch=4", "eval.tasks=4", "eval.steps=[1]", "cluster.workers=2"]
    if config == "pointnav":
        return [*common, "task.shots=4", "task.horizon=10", "model.width=16"]
    images = [*omniglot.overrides(omniglot.zips[0]), "data.rotations=false", "model.width=8", "task.queries=2"]
    small_memory = ["algorithm.controller_size=16", "algorithm.memory_slots=8", "algorithm.memory_width=8"] if config == "mann" else []
    return [*common, *images, "algorithm.inner_steps=1" if config == "imaml" else "algorithm.inner_steps=0", *small_memory]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One prepared Omniglot for every run here."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
@pytest.mark.parametrize("config", ["imaml", "protonet", "matchingnet", "mann", "pointnav"])
def test_every_family_runs_distributed_and_is_tracked_like_maml(ray_local, tracking, cache_dir, omniglot, config):
    cfg = load(config, [*small(config, omniglot), f"data.cache_dir={cache_dir}"])
    parent = mlflow.get_run(run(cfg, tracking))
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["algorithm"] == cfg.algorithm.name
    assert {"eval_pre_adapt_loss", "eval_post_adapt_loss", "eval_post_adapt_loss_ci95"} <= parent.data.metrics.keys()
    assert np.isfinite(parent.data.metrics["eval_post_adapt_loss"])


@pytest.mark.parametrize(
    "config, overrides, message",
    [
        ("pointnav", ["algorithm.name=maml"], "'maml' learns regression and classification tasks, data set 'pointnav' is rl"),
        ("sinusoid", ["algorithm.name=maml_rl"], "'maml_rl' learns rl tasks, data set 'sinusoid' is regression"),
        ("sinusoid", ["algorithm.name=protonet"], "'protonet' learns classification tasks, data set 'sinusoid' is regression"),
        ("imaml", ["algorithm.lam=0"], "'algorithm.lam': expected a positive number"),
        ("imaml", ["algorithm.cg_steps=0"], "'algorithm.cg_steps': expected a positive integer"),
        ("pointnav", ["task.horizon=-1"], "'task.horizon': expected a positive integer"),
    ],
)
def test_bad_family_configs_are_refused_with_the_key_named(config, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(config, overrides)
