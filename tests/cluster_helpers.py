"""What the cluster tests share: a short sinusoid training loop driven straight through the Driver, and the same
training in one process, which every aggregation path must reproduce."""

import numpy as np
import torch

from cluster.driver import Driver
from cluster.worker import MetaWorker
from meta_core.build import build_learner, build_source, vectorized
from meta_core.flat import flatten, layout_of
from meta_core.models import init_params
from meta_core.outer import make_optimizer
from meta_core.step import share_gradient
from pipelines.config import load

STEPS = 4
WorkerBase = MetaWorker.__ray_actor_class__  # the plain class, for test-only subclasses


def config(*overrides: str) -> dict:
    """Plain SGD on 7 tasks a step: a wrong divisor in the aggregation changes the parameters (Adam would hide a
    constant factor), and no number of workers above one splits 7 tasks evenly (an even split hides a mean of means)."""
    base = ["train.meta_batch=7", "train.optimizer=sgd", "train.outer_lr=0.05", f"train.steps={STEPS}", "train.compile=false"]
    return load("sinusoid", [*base, *overrides])


def start(config: dict):
    """The learner, its parameters' layout, the flat parameters and their outer optimizer, as training starts."""
    algo = build_learner(config)
    params = algo.init(init_params(algo.model, config["seed"]))
    flat = flatten(params).clone()
    return algo, layout_of(params), flat, make_optimizer(config["train"]["optimizer"], flat, config["train"]["outer_lr"])


def train(config: dict, worker_cls=MetaWorker, between_steps=lambda step, driver: None, driver_cls=Driver) -> np.ndarray:
    """The outer loop of ``pipelines.stages.train`` without MLflow; returns the final flat parameters."""
    _, layout, flat, optimizer = start(config)
    driver = driver_cls(config, {"train": None, "test": None}, layout, worker_cls)
    per_call = config["cluster"]["steps_per_call"]
    try:
        for first in range(0, config["train"]["steps"], per_call):
            between_steps(first, driver)
            driver.steps(flat, optimizer, first, min(per_call, config["train"]["steps"] - first))
    finally:
        driver.shutdown()
    return flat.detach().numpy().copy()


def summed_gradient(config: dict, flat: torch.Tensor, layout, step: int, indices) -> torch.Tensor:
    """The meta-gradients of tasks ``indices`` of ``step`` at ``flat``, summed in this process."""
    algo, source = build_learner(config), build_source(config)
    total, _ = share_gradient(algo, source, flat, layout, config["seed"], step, indices, vectorized(config, on_gpu=False))
    return total


def mean_gradient(config: dict, flat: torch.Tensor, layout, step: int) -> torch.Tensor:
    """The meta-batch's mean meta-gradient: every task of ``step`` summed in one process, divided by their number."""
    meta_batch = config["train"]["meta_batch"]
    return summed_gradient(config, flat, layout, step, range(meta_batch)) / meta_batch


def reference(config: dict) -> np.ndarray:
    """``train`` in one process, with no workers: the parameters every aggregation path must end with."""
    _, layout, flat, optimizer = start(config)
    for step in range(config["train"]["steps"]):
        flat.grad = mean_gradient(config, flat, layout, step).float()
        optimizer.step()
    return flat.detach().numpy().copy()
