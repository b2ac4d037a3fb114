"""What the cluster tests share: a short sinusoid training loop driven straight through the Driver, and the same
training in one process, which every aggregation path must reproduce."""

import functools

import numpy as np
import torch

from cluster.driver import Driver
from meta_core.step import micro_batch_gradient, vectorized
from pipelines.build import build_learner, prepared, task_source
from pipelines.config import Config, load
from pipelines.pipeline import load_splits
from pipelines.session import Session

STEPS = 4


def config(*overrides: str, name: str = "sinusoid") -> Config:
    """Plain SGD on 7 tasks a step: a wrong divisor in the aggregation changes the parameters (Adam would hide a
    constant factor), and no number of workers above one splits 7 tasks evenly (an even split hides a mean of means)."""
    base = ["train.meta_batch=7", "train.optimizer=sgd", "train.outer_lr=0.05", f"train.steps={STEPS}", "train.compile=false"]
    return load(name, [*base, *overrides])


def splits(config: Config) -> dict:
    """What the workers draw tasks from: the prepared data set's splits, or none for tasks drawn from a formula."""
    return load_splits({"dataset": None if config.dataset.generated else str(prepared(config))})


def session(config: Config, worker_cls=None, driver_cls=Driver) -> Session:
    """The training session the pipeline would start, its driver ``driver_cls`` with workers of ``worker_cls``."""
    return Session.from_config(config, splits(config), driver=functools.partial(driver_cls, worker_cls=worker_cls))


def start(config: Config):
    """The learner, its parameters' layout, the flat parameters and their outer optimizer, as training starts."""
    s = Session.from_config(config, splits={})  # its workers never start
    return s.learner, s.layout, s.flat, s.optimizer


def train(config: Config, worker_cls=None, between_steps=lambda step, driver: None, driver_cls=Driver) -> np.ndarray:
    """The outer loop of ``pipelines.stages.train`` without MLflow; returns the final flat parameters."""
    per_call, steps = config.cluster.steps_per_call, config.train.steps
    with session(config, worker_cls, driver_cls) as trained:
        for first in range(0, steps, per_call):
            between_steps(first, trained.driver)
            trained.steps(first, min(per_call, steps - first))
    return trained.flat.detach().numpy().copy()


def summed_gradient(config: Config, flat: torch.Tensor, layout, step: int, indices) -> torch.Tensor:
    """The meta-gradients of tasks ``indices`` of ``step`` at ``flat``, summed in this process."""
    vectorize = vectorized(config.train.vectorize, config.model.name, on_gpu=False)
    total, _ = micro_batch_gradient(build_learner(config), task_source(config), flat, layout, config.seed, step, indices, vectorize)
    return total


def mean_gradient(config: Config, flat: torch.Tensor, layout, step: int) -> torch.Tensor:
    """The meta-batch's mean meta-gradient: every task of ``step`` summed in one process, divided by their number."""
    meta_batch = config.train.meta_batch
    return summed_gradient(config, flat, layout, step, range(meta_batch)) / meta_batch


def reference(config: Config) -> np.ndarray:
    """``train`` in one process, with no workers: the parameters every aggregation path must end with."""
    _, layout, flat, optimizer = start(config)
    for step in range(config.train.steps):
        flat.grad = mean_gradient(config, flat, layout, step).float()
        optimizer.step()
    return flat.detach().numpy().copy()
