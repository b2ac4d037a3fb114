"""Meta-test on held-out tasks (or validation, which selects models): mean and 95% interval before and after adaptation."""

import math

import numpy as np
import pandas as pd
import torch

from cluster.driver import Driver
from pipelines.config import Config


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% interval."""
    return float(values.mean()), float(1.96 * values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def evaluate(config: Config, driver: Driver, flat: torch.Tensor, split: str = "test") -> tuple[dict[str, float], pd.DataFrame]:
    """Metrics named for MLflow and a table with one row per number of adaptation steps.

    On the test split: ``eval.tasks`` tasks, metrics ``eval_*``. On the validation split: the fixed
    ``eval.val_tasks`` tasks, metrics ``val_*``, so that nothing chosen on them is named like a test figure.
    """
    inner = config.algorithm.inner_steps
    steps = sorted(set(config.eval.steps) | ({inner} if inner else set()))
    tasks, prefix = (config.eval.tasks, "eval") if split == "test" else (config.eval.val_tasks, "val")
    per_task = driver.evaluate(flat.detach().numpy(), split, tasks, steps)
    rows = []
    for n in [0, *steps]:
        row = {"adapt_steps": n}
        for metric in ("loss", "acc"):
            if f"steps{n}_{metric}" in per_task:
                row[metric], row[f"{metric}_ci95"] = mean_ci95(per_task[f"steps{n}_{metric}"])
        rows.append(row)
    table = pd.DataFrame(rows)
    metrics = {}
    for name, n in (("pre_adapt", 0), ("post_adapt", inner)):
        row = table[table.adapt_steps == n].iloc[0]
        for col in row.index.drop("adapt_steps"):
            metrics[f"{prefix}_{name}_{col}"] = float(row[col])
    for _, row in table.iterrows():
        for col in row.index.drop("adapt_steps"):
            metrics[f"{prefix}_steps{int(row.adapt_steps)}_{col}"] = float(row[col])
    return metrics, table


def higher_is_better(config: Config, metric: str) -> bool:
    """Whether a larger ``eval_..._<loss|acc>`` (or ``val_...``) wins, as the algorithm's spec says of ``loss`` and ``acc``."""
    return metric.rsplit("_", 1)[-1] in config.algorithm_spec.higher_is_better


def val_metric(config: Config) -> str:
    """The validation figure that selects (a sweep's trials; the best step with ``train.select_on: val``): the
    validation twin of ``register.metric``, ``eval_post_adapt_acc`` -> ``val_post_adapt_acc``."""
    return "val" + config.register.metric.removeprefix("eval")


def rankable(config: Config, value: float) -> float:
    """A validation figure with a diverged model's NaN as the worst possible, so that any finite figure beats it."""
    if math.isfinite(value):
        return value
    return -math.inf if higher_is_better(config, val_metric(config)) else math.inf


def improves(config: Config, value: float, best: float) -> bool:
    """Whether validation figure ``value`` is strictly better than ``best``."""
    value, best = rankable(config, value), rankable(config, best)
    return value > best if higher_is_better(config, val_metric(config)) else value < best
