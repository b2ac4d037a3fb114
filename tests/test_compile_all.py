"""`train.compile` for every registered algorithm: its meta-gradient really compiles (no fallback to eager) and equals
the eager one, on a tiny model of each kind it trains on."""

import warnings

import numpy as np
import pytest
import torch

from meta_core.envs import PointNavigation
from meta_core.models import flatten, layout_of
from meta_core.registry import ALGORITHMS, MODELS, Learner
from meta_core.step import micro_batch_gradient
from meta_core.tasks import ClassificationTasks, SinusoidTasks
from tests.test_families import one_thread  # noqa: F401  (autouse: tiny models on one thread)

FEATURES = np.random.default_rng(0).normal(size=(6, 4, 5)).astype(np.float32)  # 6 classes of 4 examples, 5 features each
IMAGES = np.random.default_rng(0).random((6, 4, 28, 28), dtype=np.float32)  # the same, as 28x28 images
NARROW = {"anml_net": {"width": 4, "nm_width": 3}}  # the image networks a classification learner may be bound to


def tiny(name: str):
    """The algorithm on a small MLP (on the first network it runs with, where it names its own) and a source of its tasks:
    3-way 1-shot over 5 features (or 28x28 images), else the sinusoid, else point navigation (a round of rollouts per inner
    step and one after)."""
    spec = ALGORITHMS[name]
    if "classification" in spec.kinds and spec.models:
        model, kind, shape, outputs, source = MODELS[spec.models[0]], "classification", (28, 28), 3, ClassificationTasks(IMAGES, 3, 1, 2)
    elif "classification" in spec.kinds:
        model, kind, shape, outputs, source = MODELS["mlp"], "classification", (5,), 3, ClassificationTasks(FEATURES, 3, 1, 2)
    elif "regression" in spec.kinds:
        model, kind, shape, outputs, source = MODELS["mlp"], "regression", (1,), 1, SinusoidTasks(5, 5)
    else:
        model, kind, shape, outputs, source = MODELS[spec.models[0]], "rl", (2,), 2, PointNavigation(episodes=2, horizon=4, rounds=3)
    model_options = {"width": 8} if kind == "rl" else NARROW.get(model.name, {})
    algo = Learner(spec, model, kind, shape, outputs, inner_steps=2, inner_lr=0.1, model_options=model_options).build()
    return algo, source, algo.initial_params(0)


def meta_gradient(algo, source, params, compiled: bool) -> np.ndarray:
    total, _ = micro_batch_gradient(algo, source, flatten(params), layout_of(params), 0, 3, range(2), vectorize=False, compiled=compiled)
    return total.numpy()


@pytest.mark.slow  # dynamo tracing each algorithm: about 4 s of CPU each
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_compiles_and_its_meta_gradient_matches_eager(name, monkeypatch):
    """Through dynamo and AOT autograd, the steps where an algorithm's code can fail to compile; inductor's code
    generation, the same for every algorithm and a minute of CPU each, is checked for MAML and Meta-SGD in
    test_perf_paths.py."""
    compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **options: compile(fn, **options, backend="aot_eager"))
    torch._dynamo.reset()
    algo, source, params = tiny(name)
    eager = meta_gradient(algo, source, params, compiled=False)
    assert np.abs(eager).max() > 0
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="train.compile")  # it really compiled: no fallback to eager
        compiled = meta_gradient(algo, source, params, compiled=True)
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-5)
