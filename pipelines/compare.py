"""Side-by-side comparison of pipeline runs: a table (printed and CSV) and their learning curves (PNG)."""

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.config import ConfigError
from pipelines.plots import smoothed


def experiment_ids(names: list[str]) -> list[str]:
    if not names:
        return [e.experiment_id for e in mlflow.search_experiments()]
    ids = []
    for name in names:
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise ConfigError(f"--experiment: no experiment named {name!r} in {mlflow.get_tracking_uri()}")
        ids.append(experiment.experiment_id)
    return ids


def headline(metrics: pd.Series) -> tuple[str, float, float]:
    """Post-adaptation accuracy for classification, loss otherwise."""
    for name in ("eval_post_adapt_acc", "eval_post_adapt_loss"):
        if pd.notna(metrics.get(f"metrics.{name}")):
            return name, metrics[f"metrics.{name}"], metrics[f"metrics.{name}_ci95"]
    return "", float("nan"), float("nan")


def table(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in runs.iterrows():
        metric, value, ci95 = headline(r)
        rows.append(
            {
                "run_id": r["run_id"],
                "run_name": r.get("tags.mlflow.runName"),
                "algorithm": r.get("tags.algorithm"),
                "dataset": r.get("tags.dataset"),
                "ways": r.get("tags.ways"),
                "shots": r.get("tags.shots"),
                "workers": r.get("tags.workers"),
                "metric": metric,
                "value": value,
                "ci95": ci95,
                "tasks_per_s": r.get("metrics.train_tasks_per_s"),
                "wall_s": (r["end_time"] - r["start_time"]).total_seconds() if pd.notna(r["end_time"]) else float("nan"),
                "status": r["status"],
            }
        )
    return pd.DataFrame(rows)


def plot_curves(runs: pd.DataFrame, path: Path) -> None:
    """Each run's meta-training loss (moving average), on one axis."""
    client = MlflowClient()
    figure = Figure(figsize=(8, 5), layout="constrained")
    ax = figure.subplots()
    for _, r in runs.iterrows():
        train_run = r.get("tags.train_run_id")
        history = client.get_metric_history(train_run, "meta_loss") if isinstance(train_run, str) and train_run else []
        if history:
            steps, values = np.array(sorted((m.step, m.value) for m in history)).T
            curve = smoothed(values)
            ax.plot(steps[len(steps) - len(curve) :], curve, label=f"{r.get('tags.mlflow.runName')} ({r['run_id'][:6]})")
    ax.set(xlabel="meta-step", ylabel="meta-training loss (moving average)", yscale="log", title="Learning curves")
    if ax.lines:
        ax.legend(fontsize="small")
    figure.savefig(path, dpi=100)


def compare(experiments: list[str], out: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """Print and save the comparison of every pipeline run in ``experiments`` (default: all)."""
    mlflow.set_tracking_uri(tracking.tracking_uri(tracking_uri))
    runs = mlflow.search_runs(experiment_ids(experiments), "tags.stage = 'pipeline'", order_by=["attributes.start_time ASC"])
    result = table(runs) if len(runs) else pd.DataFrame()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    result.to_csv(folder / "comparison.csv", index=False)
    if len(runs):
        plot_curves(runs, folder / "learning_curves.png")
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(result.to_string(index=False) if len(result) else "no pipeline runs found")
    print(f"saved {folder / 'comparison.csv'}" + (f" and {folder / 'learning_curves.png'}" if len(runs) else ""))
    return result
