"""A new algorithm or data set is one registered spec: a toy of each, defined in this file alone, goes through config
validation, distributed training, evaluation, registration and the served model, and no other file names them."""

import mlflow
import numpy as np
import pytest
import torch

from data.registry import DATASETS, DataConfig, DatasetSpec, register_dataset
from meta_core.algorithms.base import task_loss
from meta_core.algorithms.gradient import GradientLearner
from meta_core.autodiff import grad
from meta_core.models import forward
from meta_core.registry import ALGORITHMS, AlgorithmSpec, positive_number, register_algorithm
from meta_core.tasks import Task, TaskShape
from pipelines.config import ConfigError, load
from pipelines.pipeline import run
from pipelines.serving import request
from tests.conftest import ROOT


class QueryGradient(GradientLearner):
    """Plain multi-task learning, scaled: the query loss's gradient at the meta-parameters, no adaptation in it."""

    def __init__(self, *args, scale: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = scale

    def task_gradient(self, params, task: Task, pre_adapt: bool = True):
        def query_loss(weights):
            out = forward(self.model, weights, task.query_x)
            return task_loss(self.kind, out, task.query_y), out

        grads, out = grad(query_loss, has_aux=True)(params)
        return {k: self.scale * g for k, g in grads.items()}, self.task_metrics(params, params, task, pre_adapt, out)


class Lines:
    """y = a x + b, a and b uniform in [-1, 1], x uniform in [-2, 2]."""

    def __init__(self, shots: int, queries: int):
        self.shots, self.queries = shots, queries

    def sample(self, rng: np.random.Generator) -> Task:
        a, b = rng.uniform(-1, 1, size=2)
        x = rng.uniform(-2, 2, size=(self.shots + self.queries, 1)).astype(np.float32)
        x, y = torch.from_numpy(x), torch.from_numpy((a * x + b).astype(np.float32))
        return Task(x[: self.shots], y[: self.shots], x[self.shots :], y[self.shots :])


def lines(shape: TaskShape, examples: None, adapt_steps: int, data: DataConfig, split: str) -> Lines:
    return Lines(shape.shots, shape.queries)


register_algorithm(AlgorithmSpec("toy_query_gradient", QueryGradient, "the query loss's gradient, scaled", options=(positive_number("scale", 1.0),)))
register_dataset(DatasetSpec(
    "toy_lines", "regression", "straight lines", tasks=lines, example=lambda data: ("vectors", (1,)), outputs=lambda shape: 1,
    default_model=lambda data: "mlp",
))  # fmt: skip
TOY = ["data.name=toy_lines", "model.name=null", "algorithm.name=toy_query_gradient", "algorithm.scale=0.5", "train.compile=false"]


def test_the_toys_are_named_nowhere_but_here():
    named = [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and p.name != "test_specs.py" and "toy_lines" in p.read_text()]
    assert named == [] and "toy_query_gradient" in ALGORITHMS and "toy_lines" in DATASETS


def test_a_registered_algorithms_options_and_data_set_are_checked_like_the_built_in_ones():
    config = load("sinusoid", TOY)
    assert config.algorithm.options == {"scale": 0.5} and config.model.name == "mlp"
    with pytest.raises(ConfigError, match=r"'algorithm.scale': expected a positive number, got -1"):
        load("sinusoid", [*TOY, "algorithm.scale=-1"])
    with pytest.raises(ConfigError, match=r"'algorithm.name': 'protonet' learns classification tasks, data set 'toy_lines' is regression"):
        load("sinusoid", [*TOY, "algorithm.name=protonet", "algorithm.scale=null"])


@pytest.mark.slow
def test_a_registered_algorithm_and_data_set_train_distributed_evaluate_and_serve(ray_local, tracking):
    config = load(
        "sinusoid", [*TOY, "train.steps=30", "train.meta_batch=6", "train.outer_lr=0.01", "eval.tasks=20", "eval.steps=[1]", "cluster.workers=2"]
    )
    parent = mlflow.get_run(run(config, tracking))
    assert parent.info.status == "FINISHED" and parent.data.tags["algorithm"] == "toy_query_gradient"
    assert parent.data.tags["dataset"] == "toy_lines" and np.isfinite(parent.data.metrics["eval_post_adapt_loss"])
    model = mlflow.pyfunc.load_model("models:/toy_lines-10shot@champion")
    task = Lines(10, 5).sample(np.random.default_rng(0))
    answer = model.predict(request(task.support_x.numpy(), task.support_y.numpy().ravel(), task.query_x.numpy()))
    assert answer["prediction"].shape == (5,) and np.isfinite(answer["prediction"]).all()
