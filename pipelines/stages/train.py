"""Distributed meta-training: the outer loop, checkpointed so a killed run resumes exactly, and validated at each
checkpoint where the best validated parameters are the trained model (``train.select_on: val``) or a sweep ranks trials."""

import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from cluster.driver import Driver
from pipelines import checkpoint
from pipelines.build import outer_loop
from pipelines.config import Config
from pipelines.stages.evaluate import evaluate, improves, val_metric
from pipelines.tracking import MetricBuffer


def train(
    config: Config, driver: Driver, flat: torch.Tensor, run_id: str, key: str, at_validation: Callable[[int, dict[str, float]], None] | None = None
) -> dict[str, float]:
    """Meta-train ``flat`` in place up to ``train.steps``, from the run's last checkpoint if there is one.

    Per-step metrics are written to MLflow just before each checkpoint. A crash
    between the two leaves metrics ahead of the checkpoint (or of no checkpoint
    at all); the resumed run recomputes those steps (identically) without
    logging them again, so every step is logged exactly once.

    With ``train.select_on: val``, or an ``at_validation``, each checkpoint and
    the last step first validate on the ``eval.val_tasks`` fixed validation
    tasks and log their ``val_*`` metrics at that step; ``at_validation(steps
    done, metrics)`` runs after the checkpoint (a sweep's trial reports there).
    Selecting on validation, ``flat`` ends as the best validated parameters, and
    ``train.patience`` validations in a row without improvement stop training.
    The checkpoint keeps the best so far, so a resumed run selects as an
    unkilled one. Returns summary metrics.
    """
    cfg = config.train
    selects = cfg.select_on == "val"
    validates = selects or at_validation is not None
    metric = val_metric(config)
    optimizer = outer_loop(config).make_optimizer(flat)
    path = checkpoint.path_for(cfg.checkpoint_dir, run_id)
    state = checkpoint.load(path, key)
    done, best = 0, None  # best: the best validated parameters, their step and figure, and validations since ("stale")
    if state is not None:
        with torch.no_grad():
            flat.copy_(state["flat"])
        optimizer.load_state_dict(state["optimizer"])
        done, best = state["step"], state["best"]
    buffer = MetricBuffer(run_id, logged_until=MetricBuffer.last_step(run_id, "meta_loss"))
    validated = MetricBuffer(run_id, logged_until=MetricBuffer.last_step(run_id, metric))
    rates = []
    validating = False  # stopped mid-validation: the last checkpoint stands, and the resumed run validates this step again

    def save() -> None:
        buffer.flush()
        validated.flush()
        checkpoint.save(path, flat, optimizer, done, key, best)

    def validate() -> dict[str, float]:
        nonlocal best, validating
        validating = True
        metrics, _ = evaluate(config, driver, flat, "val")
        validated.add(metrics, done)
        if selects and (best is None or improves(config, metrics[metric], best["value"])):
            best = {"flat": flat.detach().clone(), "step": done, "value": metrics[metric], "stale": 0}
        elif selects:
            best["stale"] += 1
        validating = False
        return metrics

    def out_of_patience() -> bool:
        return cfg.patience is not None and best is not None and best["stale"] >= cfg.patience

    bar = tqdm(total=cfg.steps, initial=done, desc="train", unit="step", mininterval=1.0)
    try:
        while done < cfg.steps and not out_of_patience():  # in calls of cluster.steps_per_call steps, each ending by the next checkpoint
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
                val_metrics = validate() if validates else {}
                save()
                if at_validation is not None:
                    at_validation(done, val_metrics)
    finally:  # also on Ctrl-C: keep what was done
        if not validating:
            save()
        bar.close()
    summary = {"train_tasks_per_s": float(np.median(rates))} if rates else {}
    if selects:
        with torch.no_grad():
            flat.copy_(best["flat"])
        summary.update({"best_step": best["step"], f"best_{metric}": best["value"]})
        if done < cfg.steps:
            summary["stopped_at"] = done
            print(f"train: stopped at step {done}, {cfg.patience} validations without improvement; the best was at step {best['step']}")
    return summary
