"""The continual-learning meta-test of a lifelong learner (OML's and ANML's protocol); ``pipelines.plots.log_meta_test`` logs it.

Each run (a test task, drawn from ``(seed, run)``) is a stream of the test split's classes, never met in
meta-training, each with ``algorithm.test_shots`` training examples and ``algorithm.test_queries`` held out. The
learner learns the stream in one pass, one example at a time, and after its first ``N`` classes (each N of
``eval.steps``) is scored on those classes' training examples (what it kept: ``train_acc``) and held-out ones
(``acc``). The runs are the workers' evaluation tasks, spread over them as any evaluation is; each runs at every
inner rate of ``algorithm.test_lrs``, and at each N the rate with the best mean training accuracy is reported, as
the papers choose it. The same meta-test from the untrained initial parameters is the from-scratch baseline
(``scratch_*``).
"""

import pandas as pd

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
