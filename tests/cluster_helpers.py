"""What the cluster tests share: a short sinusoid training loop driven straight through the Driver."""

import numpy as np
import torch

from cluster.driver import Driver
from cluster.worker import MetaWorker
from meta_core.build import build_learner
from meta_core.flat import flatten, layout_of
from meta_core.models import init_params
from meta_core.outer import make_optimizer
from pipelines.config import load

STEPS = 4
WorkerBase = MetaWorker.__ray_actor_class__  # the plain class, for test-only subclasses


def config(*overrides: str) -> dict:
    return load("sinusoid", ["train.meta_batch=6", f"train.steps={STEPS}", "train.compile=false", *overrides])


def train(config: dict, worker_cls=MetaWorker, between_steps=lambda step, driver: None, driver_cls=Driver) -> np.ndarray:
    """The outer loop of ``pipelines.stages.train`` without MLflow; returns the final flat parameters."""
    algo = build_learner(config)
    params = algo.init(init_params(algo.model, config["seed"]))
    layout = layout_of(params)
    flat = flatten(params).clone()
    optimizer = make_optimizer(config["train"]["optimizer"], flat, config["train"]["outer_lr"])
    driver = driver_cls(config, {"train": None, "test": None}, layout, worker_cls)
    try:
        for step in range(config["train"]["steps"]):
            between_steps(step, driver)
            grad, _ = driver.gradient(flat.detach().numpy(), step)
            flat.grad = torch.from_numpy(grad.astype(np.float32))
            optimizer.step()
    finally:
        driver.shutdown()
    return flat.detach().numpy().copy()
