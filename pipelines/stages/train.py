"""Distributed meta-training: the outer loop over meta-steps."""

import time

import numpy as np
import torch
from tqdm import tqdm

from cluster.driver import Driver
from meta_core.outer import make_optimizer
from pipelines.tracking import MetricBuffer


def train(config: dict, driver: Driver, flat: torch.Tensor, run_id: str, start_step: int = 0, optimizer_state=None):
    """Run meta-steps ``start_step..train.steps-1``, updating ``flat`` in place; returns the optimizer."""
    train_cfg = config["train"]
    optimizer = make_optimizer(train_cfg["optimizer"], flat, train_cfg["outer_lr"])
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    buffer = MetricBuffer(run_id)
    bar = tqdm(range(start_step, train_cfg["steps"]), initial=start_step, total=train_cfg["steps"], desc="train", unit="step", mininterval=1.0)
    try:
        for step in bar:
            started = time.perf_counter()
            grad, metrics = driver.gradient(flat.detach().numpy(), step)
            flat.grad = torch.from_numpy(grad.astype(np.float32))
            optimizer.step()
            step_s = time.perf_counter() - started
            metrics.update(step_s=step_s, tasks_per_s=train_cfg["meta_batch"] / step_s)
            buffer.add(metrics, step)
            bar.set_postfix(loss=f"{metrics['meta_loss']:.4f}", tasks_per_s=f"{metrics['tasks_per_s']:.0f}", refresh=False)
    finally:
        buffer.flush()
        bar.close()
    return optimizer
