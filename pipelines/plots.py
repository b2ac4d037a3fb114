"""The two pictures to compare runs by in the MLflow UI: the learning curve and the metric versus adaptation steps."""

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # the object API: no pyplot state, no display backend
from mlflow.tracking import MlflowClient

PHASES = ("pre_adapt", "post_adapt")
NAMES = {"loss": "loss", "acc": "accuracy", "return": "return"}


def smoothed(values: np.ndarray) -> np.ndarray:
    """A moving average over ~2% of the run: per-step meta-batch metrics are noisy."""
    window = max(1, len(values) // 50)
    return np.convolve(values, np.ones(window) / window, mode="valid")


def learning_curve(train_run_id: str) -> Figure:
    """Training query loss (and accuracy) per meta-step, before and after adaptation."""
    client = MlflowClient()
    logged = client.get_run(train_run_id).data.metrics
    panels = [m for m in ("loss", "acc") if f"post_adapt_{m}" in logged]
    figure = Figure(figsize=(5 * len(panels), 3.5), layout="constrained")
    for ax, metric in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for phase in PHASES:
            history = sorted((m.step, m.value) for m in client.get_metric_history(train_run_id, f"{phase}_{metric}"))
            steps, values = np.array(history).T
            (line,) = ax.plot(steps, values, alpha=0.25)
            ax.plot(steps[len(steps) - len(smoothed(values)) :], smoothed(values), color=line.get_color(), label=phase.replace("_", " "))
        ax.set(xlabel="meta-step", ylabel=f"training query {NAMES[metric]}", title=f"learning curve: {NAMES[metric]}")
        ax.legend()
    return figure


def adaptation_curve(eval_table: pd.DataFrame) -> Figure:
    """Held-out query accuracy (loss for regression, return for meta-RL) after 0..k adaptation steps, with 95% intervals."""
    metric = next(m for m in ("acc", "return", "loss") if m in eval_table)
    figure = Figure(figsize=(5, 3.5), layout="constrained")
    ax = figure.subplots()
    ax.errorbar(eval_table["adapt_steps"], eval_table[metric], yerr=eval_table[f"{metric}_ci95"], marker="o", capsize=3)
    ax.set(xlabel="adaptation steps", ylabel=f"held-out query {NAMES[metric]}", title=f"{NAMES[metric]} vs adaptation steps")
    return figure


def log_plots(train_run_id: str, eval_table: pd.DataFrame) -> None:
    """Log ``learning_curve.png`` and ``adaptation_steps.png`` to the active run; for a lifelong learner's meta-test,
    its curves against classes learned instead of the latter (``pipelines.stages.lifelong.log``)."""
    mlflow.log_figure(learning_curve(train_run_id), "learning_curve.png")
    if "classes" in eval_table:
        from pipelines.stages import lifelong

        lifelong.log(eval_table)
    else:
        mlflow.log_figure(adaptation_curve(eval_table), "adaptation_steps.png")
