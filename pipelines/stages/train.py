"""Distributed meta-training: the outer loop, checkpointed so a killed run resumes exactly."""

import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from cluster.driver import Driver
from pipelines import checkpoint
from pipelines.build import outer_loop
from pipelines.config import Config
from pipelines.tracking import MetricBuffer


def train(
    config: Config, driver: Driver, flat: torch.Tensor, run_id: str, key: str, at_checkpoint: Callable[[int], None] = lambda done: None
) -> dict[str, float]:
    """Meta-train ``flat`` in place up to ``train.steps``, from the run's last checkpoint if there is one.

    Per-step metrics are written to MLflow just before each checkpoint. A crash
    between the two leaves metrics ahead of the checkpoint (or of no checkpoint
    at all); the resumed run recomputes those steps (identically) without
    logging them again, so every step is logged exactly once.
    ``at_checkpoint(steps done)`` runs after each checkpoint and after the last
    step: a sweep's trial validates there. Returns summary metrics.
    """
    cfg = config.train
    optimizer = outer_loop(config).make_optimizer(flat)
    path = checkpoint.path_for(cfg.checkpoint_dir, run_id)
    state = checkpoint.load(path, key)
    done = 0
    if state is not None:
        with torch.no_grad():
            flat.copy_(state["flat"])
        optimizer.load_state_dict(state["optimizer"])
        done = state["step"]
    buffer = MetricBuffer(run_id, logged_until=MetricBuffer.last_step(run_id, "meta_loss"))
    rates = []

    def save() -> None:
        buffer.flush()
        checkpoint.save(path, flat, optimizer, done, key)

    bar = tqdm(total=cfg.steps, initial=done, desc="train", unit="step", mininterval=1.0)
    try:
        while done < cfg.steps:  # in calls of cluster.steps_per_call steps, each ending by the next checkpoint
            count = min(config.cluster.steps_per_call, cfg.steps - done, cfg.checkpoint_every - done % cfg.checkpoint_every)
            started = time.perf_counter()
            per_step = driver.steps(flat, optimizer, done, count)
            step_s = (time.perf_counter() - started) / count
            for step, metrics in enumerate(per_step, start=done):
                metrics.update(step_s=step_s, tasks_per_s=cfg.meta_batch / step_s)
                rates.append(metrics["tasks_per_s"])
                buffer.add(metrics, step)
            done += count
            bar.update(count)
            bar.set_postfix(loss=f"{metrics['meta_loss']:.4f}", tasks_per_s=f"{metrics['tasks_per_s']:.0f}", refresh=False)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save()
                at_checkpoint(done)
    finally:  # also on Ctrl-C: keep what was done
        save()
        bar.close()
    return {"train_tasks_per_s": float(np.median(rates))} if rates else {}
