"""The continual-learning meta-test of a lifelong learner (OML's and ANML's protocol), and what it logs.

Each run (a test task, drawn from ``(seed, run)``) is a stream of the test split's classes, never met in
meta-training, each with ``algorithm.test_shots`` training examples and ``algorithm.test_queries`` held out. The
learner learns the stream in one pass, one example at a time, and after its first ``N`` classes (each N of
``eval.steps``) is scored on those classes' training examples (what it kept: ``train_acc``) and held-out ones
(``acc``). The runs are the workers' evaluation tasks, spread over them as any evaluation is; each runs at every
inner rate of ``algorithm.test_lrs``, and at each N the rate with the best mean training accuracy is reported, as
the papers choose it. The same meta-test from the untrained initial parameters is the from-scratch baseline
(``scratch_*``).
"""

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from meta_core.models import flatten
from pipelines.session import Session
from pipelines.stages.evaluate import mean_ci95

FIGURES = ("acc", "train_acc")


def meta_test(session: Session, split: str, runs: int, counts: list[int]) -> pd.DataFrame:
    """One row per count of classes: the chosen rate, and the mean and 95% interval of each figure over the runs."""
    per_run = session.evaluate_split(split, runs, counts)
    rates = session.learner.test_lrs
    rows = []
    for n in counts:
        best = max(range(len(rates)), key=lambda j: per_run[f"lr{j}_steps{n}_train_acc"].mean())
        row = {"classes": n, "lr": rates[best]}
        for figure in (*FIGURES, "loss"):
            row[figure], row[f"{figure}_ci95"] = mean_ci95(per_run[f"lr{best}_steps{n}_{figure}"])
        rows.append(row)
    return pd.DataFrame(rows)


def evaluate(session: Session, split: str = "test") -> tuple[dict[str, float], pd.DataFrame]:
    """Metrics ``<eval|val>_steps<N>_<figure>`` (``post_adapt``: at the most classes) and, on the test split, a table
    with the from-scratch baseline's figures beside (``scratch_*``)."""
    config = session.config
    counts = sorted(config.eval.steps)
    runs, prefix = (config.eval.tasks, "eval") if split == "test" else (config.eval.val_tasks, "val")
    table = meta_test(session, split, runs, counts)
    if split == "test":
        trained = session.flat.detach().clone()
        session.load(flatten(session.learner.initial_params(config.seed)))
        scratch = meta_test(session, split, runs, counts)
        session.load(trained)
        table = table.join(scratch.drop(columns="classes").add_prefix("scratch_"))
    metrics = {}
    for _, row in table.iterrows():
        names = [c for c in row.index if c != "classes" and not c.startswith("scratch_")]
        for name in names:
            metrics[f"{prefix}_steps{int(row.classes)}_{name}"] = float(row[name])
            if row.classes == counts[-1]:
                metrics[f"{prefix}_post_adapt_{name}"] = float(row[name])
    return metrics, table


def curves(table: pd.DataFrame, baselines: dict[str, pd.DataFrame] | None = None) -> Figure:
    """Accuracy against classes learned, on the training examples and on held-out ones, with 95% intervals: the
    learner's (``table``) and each baseline's beside it (the scratch columns of ``table``, and ``baselines``)."""
    lines = {"meta-learned": table}
    if "scratch_acc" in table:
        lines["from scratch"] = table[["classes"]].join(table.filter(like="scratch_").rename(columns=lambda c: c.removeprefix("scratch_")))
    lines.update(baselines or {})
    figure = Figure(figsize=(10, 3.5), layout="constrained")
    for ax, (figure_name, title) in zip(
        figure.subplots(1, 2), (("train_acc", "training examples (kept)"), ("acc", "held-out examples")), strict=True
    ):
        for label, frame in lines.items():
            ax.errorbar(frame["classes"], frame[figure_name], yerr=frame[f"{figure_name}_ci95"], marker="o", capsize=3, label=label)
        ax.set(xlabel="classes learned, one pass", ylabel="accuracy", title=title, ylim=(0, 1))
        ax.legend()
    return figure


def log(table: pd.DataFrame) -> None:
    """In the active run: each figure (``meta_test_<figure>``, its interval, the chosen rate) stepped by the classes
    learned, and ``classes_learned.png``."""
    for _, row in table.iterrows():
        values = {f"meta_test_{name}": float(value) for name, value in row.items() if name != "classes" and np.isfinite(value)}
        mlflow.log_metrics(values, step=int(row.classes))
    mlflow.log_figure(curves(table), "classes_learned.png")
