"""Meta-test on held-out tasks (or validation, which selects models): mean and 95% interval before and after adaptation."""

import numpy as np
import pandas as pd

from pipelines.session import Session


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% interval."""
    return float(values.mean()), float(1.96 * values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def evaluate(session: Session, split: str = "test") -> tuple[dict[str, float], pd.DataFrame]:
    """The session's parameters: metrics named for MLflow and a table with one row per number of adaptation steps.

    On the test split: ``eval.tasks`` tasks, metrics ``eval_*``. On the validation split: the fixed
    ``eval.val_tasks`` tasks, metrics ``val_*``, so that nothing chosen on them is named like a test figure.
    """
    config = session.config
    if config.algorithm_spec.lifelong:
        from pipelines.stages import lifelong  # its own protocol: classes learned one after another

        return lifelong.evaluate(session, split)
    inner = config.algorithm.inner_steps
    steps = sorted(set(config.eval.steps) | ({inner} if inner else set()))
    tasks, prefix = (config.eval.tasks, "eval") if split == "test" else (config.eval.val_tasks, "val")
    per_task = session.evaluate_split(split, tasks, steps)
    rows = []
    for n in [0, *steps]:
        row = {"adapt_steps": n}
        for metric in ("loss", "acc", "return"):
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
    if "steps0_return" in per_task and inner:  # meta-RL: what adapting adds to each task's return
        delta = per_task[f"steps{inner}_return"] - per_task["steps0_return"]
        metrics[f"{prefix}_adaptation_delta"], metrics[f"{prefix}_adaptation_delta_ci95"] = mean_ci95(delta)
    return metrics, table
