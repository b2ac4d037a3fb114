"""What the cluster tests share: a short sinusoid training loop driven straight through the Driver."""

import numpy as np

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
    per_call = config["cluster"]["steps_per_call"]
    try:
        for first in range(0, config["train"]["steps"], per_call):
            between_steps(first, driver)
            driver.steps(flat, optimizer, first, min(per_call, config["train"]["steps"] - first))
    finally:
        driver.shutdown()
    return flat.detach().numpy().copy()
