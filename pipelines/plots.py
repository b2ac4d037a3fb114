"""The pictures to compare runs by in the MLflow UI: the learning curve and the metric versus adaptation steps (for a
lifelong learner, accuracy versus classes learned)."""

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # the object API: no pyplot state, no display backend
from mlflow.tracking import MlflowClient

PHASES = ("pre_adapt", "post_adapt")
NAMES = {"loss": "loss", "acc": "accuracy", "return": "return"}
META_TEST = "meta_test_"  # the prefix of a lifelong meta-test's metrics, whose step is the number of classes learned


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


def meta_test_lines(table: pd.DataFrame, label: str, scratch_label: str) -> dict[str, pd.DataFrame]:
    """A meta-test table's curves by label: the learner's, and its from-scratch baseline's where the table holds one."""
    found = {label: table}
    if "scratch_acc" in table:
        found[scratch_label] = table[["classes"]].join(table.filter(like="scratch_").rename(columns=lambda c: c.removeprefix("scratch_")))
    return found


def classes_learned(by_label: dict[str, pd.DataFrame]) -> Figure:
    """Accuracy against classes learned, on the training examples and on held-out ones, with 95% intervals: one
    line per meta-test table (``meta_test_lines``)."""
    figure = Figure(figsize=(10, 3.5), layout="constrained")
    for ax, (figure_name, title) in zip(
        figure.subplots(1, 2), (("train_acc", "training examples (kept)"), ("acc", "held-out examples")), strict=True
    ):
        for label, frame in by_label.items():
            ax.errorbar(frame["classes"], frame[figure_name], yerr=frame[f"{figure_name}_ci95"], marker="o", capsize=3, label=label)
        ax.set(xlabel="classes learned, one pass", ylabel="accuracy", title=title, ylim=(0, 1))
        ax.legend(fontsize="small")
    return figure


def log_meta_test(table: pd.DataFrame) -> None:
    """In the active run, a lifelong learner's meta-test (``pipelines.stages.lifelong``): each figure
    (``meta_test_<figure>``, its interval, the chosen rate) stepped by the classes learned, and ``classes_learned.png``."""
    for _, row in table.iterrows():
        values = {f"{META_TEST}{name}": float(value) for name, value in row.items() if name != "classes" and np.isfinite(value)}
        mlflow.log_metrics(values, step=int(row.classes))
    mlflow.log_figure(classes_learned(meta_test_lines(table, "meta-learned", "from scratch")), "classes_learned.png")


def log_plots(train_run_id: str, eval_table: pd.DataFrame) -> None:
    """Log ``learning_curve.png`` and ``adaptation_steps.png`` to the active run; for a lifelong learner's meta-test,
    its curves against classes learned instead of the latter (``log_meta_test``)."""
    mlflow.log_figure(learning_curve(train_run_id), "learning_curve.png")
    if "classes" in eval_table:
        log_meta_test(eval_table)
    else:
        mlflow.log_figure(adaptation_curve(eval_table), "adaptation_steps.png")
