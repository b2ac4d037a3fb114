"""The learner protocol: training, evaluation and serving adapt the same way; an algorithm file is all it takes."""

import importlib
import sys
from pathlib import Path

import pytest
import torch

from meta_core.algorithms.base import PREDICTION_SEED, answer, task_loss
from meta_core.registry import ALGORITHMS, MODELS, Learner, import_modules
from meta_core.tasks import ClassificationTasks, seeded_noise, task_rng
from tests.test_families import SMALL_MANN, WAYS, class_images, one_thread  # noqa: F401  (one_thread: an autouse fixture)

INNER_STEPS = 2
LEARNERS = [
    ("maml", {}),
    ("anil", {}),
    ("metasgd", {}),
    ("reptile", {}),
    ("imaml", {"cg_steps": 2}),
    ("metagan", {"generated": 1, "noise": 8, "generator_width": 16}),
    ("protonet", {}),
    ("mann", SMALL_MANN),
    ("hallucination", {"generated": 2, "noise": 8, "generator_width": 16}),
]


def build(name: str, **options):
    """A 3-way learner of 28x28 images on conv4 of width 8, trained with 2 inner steps of 0.3."""
    return Learner(ALGORITHMS[name], MODELS["conv4"], "classification", (28, 28), WAYS, INNER_STEPS, 0.3, options, {"width": 8}).build()


def served_metrics(algo, params, task, steps: int | None) -> dict[str, torch.Tensor]:
    """The query loss and accuracy of the answer the served model gives to the task's support set and queries."""
    out = answer(algo, params, task.support_x, task.support_y, task.query_x, steps).detach()
    return {"loss": task_loss("classification", out, task.query_y), "acc": (out.argmax(-1) == task.query_y).float().mean()}


@pytest.mark.parametrize("name, options", LEARNERS, ids=[name for name, _ in LEARNERS])
def test_training_evaluation_and_serving_adapt_the_same_way(name, options):
    """Under the noise a served model draws, the figures after adapting are the same from all three: training's
    post-adaptation metrics, evaluation's at the trained step count, and the served answer's (at every count)."""
    algo = build(name, **options)
    params = algo.initial_params(0)
    task = ClassificationTasks(class_images(), WAYS, 2, 3).sample(task_rng(0, 0, 0, 0))
    with seeded_noise("cpu", PREDICTION_SEED):
        _, trained = algo.task_gradient(params, task)
    with seeded_noise("cpu", PREDICTION_SEED):
        evaluated = algo.evaluate_task(params, task, [1, INNER_STEPS, 3])
    for metric in ("loss", "acc"):
        torch.testing.assert_close(evaluated[f"steps{INNER_STEPS}_{metric}"], trained[f"post_adapt_{metric}"], rtol=1e-5, atol=1e-6)
        for steps, row in ((None, INNER_STEPS), (0, 0), (1, 1), (3, 3)):
            served = served_metrics(algo, params, task, steps)[metric]
            torch.testing.assert_close(served, evaluated[f"steps{row}_{metric}"], rtol=1e-5, atol=1e-6, msg=f"{metric} after {row} steps")
    if ALGORITHMS[name].inner_loop:  # the step counts are real: the learner changes with them
        assert evaluated["steps0_loss"] != evaluated["steps3_loss"]


DROPPED = '''
from meta_core.algorithms.protonet import ProtoNet
from meta_core.registry import AlgorithmSpec, register_algorithm
from meta_core.algorithms.episodic import EPISODIC


class Nearest(ProtoNet):
    """Prototypes by another name."""


register_algorithm(AlgorithmSpec("{name}", Nearest, "a protonet dropped into the package", **EPISODIC))
'''


def test_an_algorithm_file_dropped_into_the_package_is_found_built_and_evaluated(tmp_path):
    name = f"dropped_{tmp_path.name.replace('-', '_')}"
    package = Path(importlib.import_module("meta_core.algorithms").__file__).parent
    module = package / f"{name}.py"
    assert name not in ALGORITHMS and not module.exists()
    writes_bytecode = sys.dont_write_bytecode
    try:
        sys.dont_write_bytecode = True
        module.write_text(DROPPED.format(name=name))
        importlib.invalidate_caches()
        import_modules("meta_core.algorithms")
        assert ALGORITHMS[name].summary == "a protonet dropped into the package"
        algo = build(name)
        task = ClassificationTasks(class_images(), WAYS, 2, 3).sample(task_rng(0, 0, 0, 1))
        metrics = algo.evaluate_task(algo.initial_params(0), task, [1])
        assert metrics.keys() == {f"steps{n}_{m}" for n in (0, 1) for m in ("loss", "acc")}
    finally:
        module.unlink(missing_ok=True)
        sys.dont_write_bytecode = writes_bytecode
        sys.modules.pop(f"meta_core.algorithms.{name}", None)
        ALGORITHMS.pop(name, None)
        importlib.invalidate_caches()
    assert not module.exists() and name not in ALGORITHMS
