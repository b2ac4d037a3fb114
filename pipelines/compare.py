"""Side-by-side comparison of pipeline runs: a table (printed and CSV), with the published figure each config names
beside its own, their learning curves (PNG) and the lifelong runs' meta-tests on one figure (PNG); and of each
sweep's trials: a table sorted by the sweep's metric and a PNG of the metric against each searched key."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.config import ConfigError
from pipelines.plots import META_TEST, classes_learned, meta_test_lines, smoothed
from pipelines.selection import Metric
from pipelines.tracking import MetricBuffer


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


def beside_published(r: pd.Series) -> dict:
    """The published figure where the run's config names one, and ours at its protocol (the published test-time
    steps, averaged over as many test tasks) with ours minus theirs; NaN where the protocols differ, which
    ``published_protocol`` then says."""
    published, nan = r.get("metrics.published_acc", float("nan")), float("nan")
    row = {"published": published, "published_ci95": r.get("metrics.published_acc_ci95", nan), "published_protocol": None}
    row |= {"at_published": nan, "at_published_ci95": nan, "vs_published": nan, "published_source": r.get("tags.published_source")}
    if pd.isna(published):
        return row
    steps, tasks = r.get("tags.published_steps"), r.get("tags.published_tasks")
    if not isinstance(steps, str):
        return row | {"published_protocol": "not recorded: not compared"}
    if not isinstance(tasks, str):
        return row | {"published_protocol": f"{steps} steps, tasks not stated: not compared"}
    protocol, ours, ours_tasks = f"{steps} steps, {tasks} tasks", r.get(f"metrics.eval_steps{steps}_acc", nan), r.get("params.eval.tasks")
    if ours_tasks != tasks:
        return row | {"published_protocol": f"{protocol}; ours on {ours_tasks} tasks: not compared"}
    if pd.isna(ours):
        return row | {"published_protocol": f"{protocol}; ours not evaluated after {steps} steps: not compared"}
    ci95 = r.get(f"metrics.eval_steps{steps}_acc_ci95", nan)
    return row | {"published_protocol": protocol, "at_published": ours, "at_published_ci95": ci95, "vs_published": ours - published}


def table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per pipeline run: what it ran, its headline figure, the published one beside ours at its protocol
    (``beside_published``), its speed and how it ended."""
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
                **beside_published(r),
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


def meta_test_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each lifelong run's meta-test table (``pipelines.stages.lifelong``), read back from its evaluate run's
    ``meta_test_*`` metrics, whose step is the number of classes learned; by the run's label."""
    client, tables = MlflowClient(), {}
    for _, r in runs.iterrows():
        evaluate_run = r.get("tags.evaluate_run_id")
        if not isinstance(evaluate_run, str) or not evaluate_run:
            continue
        names = [name for name in client.get_run(evaluate_run).data.metrics if name.startswith(META_TEST)]
        columns = {name.removeprefix(META_TEST): {m.step: m.value for m in client.get_metric_history(evaluate_run, name)} for name in names}
        if columns:
            tables[f"{r.get('tags.mlflow.runName')} ({r['run_id'][:6]})"] = pd.DataFrame(columns).rename_axis("classes").reset_index()
    return tables


def meta_test_curves(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The lifelong runs' curves for one figure (``plots.classes_learned``), each beside its from-scratch baseline;
    a baseline already there (the same network from the same seed) only once."""
    by_label: dict[str, pd.DataFrame] = {}
    for label, table in tables.items():
        for name, frame in meta_test_lines(table, label, f"{label}, from scratch").items():
            if not any(frame.equals(drawn) for drawn in by_label.values()):
                by_label[name] = frame
    return by_label


def trials_table(sweep: Run) -> pd.DataFrame:
    """One row per trial of ``sweep``: its searched values, its last validation figure and the step it was taken
    at, and how it ended; best first (a trial with no figure, or NaN, last)."""
    metric, keys = sweep.data.tags["sweep_metric"], sweep.data.tags["sweep_keys"].split(",")
    rows = []
    for trial in mlflow.search_runs([sweep.info.experiment_id], f"tags.mlflow.parentRunId = '{sweep.info.run_id}'", output_format="list"):
        values = json.loads(trial.data.tags["trial_values"])
        rows.append(
            {
                "trial": trial.data.tags["trial_id"],
                **{key: values[key] for key in keys},
                metric: trial.data.metrics.get(metric, float("nan")),
                "step": MetricBuffer.last_step(trial.info.run_id, metric),
                "status": trial.data.tags.get("trial_status", trial.info.status.lower()),
                "run_id": trial.info.run_id,
            }
        )
    table = pd.DataFrame(rows, columns=["trial", *keys, metric, "step", "status", "run_id"])
    return Metric(metric, higher_is_better=sweep.data.tags["sweep_mode"] == "max").best_first(table, then="trial")


def plot_sweep(table: pd.DataFrame, keys: list[str], metric: str, path: Path) -> None:
    """The metric against each searched key, one panel per key; trials that did not run to the end (ASHA stopped
    them, or the sweep is not over) are hollow."""
    figure = Figure(figsize=(4.5 * len(keys), 3.5), layout="constrained")
    for ax, key in zip(figure.subplots(1, len(keys), squeeze=False)[0], keys, strict=True):
        numeric = table[key].map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).all()
        x = table[key] if numeric else table[key].map(str)
        completed = table.status == "completed"
        ax.scatter(x[completed], table[metric][completed], label="completed")
        ax.scatter(x[~completed], table[metric][~completed], facecolors="none", edgecolors="tab:red", label="stopped before the end")
        if numeric and (table[key] > 0).all() and table[key].max() >= 10 * table[key].min():
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel=metric)
    figure.axes[0].legend(fontsize="small")
    figure.savefig(path, dpi=100)


def show_sweeps(ids: list[str], folder: Path) -> None:
    """Print and save (CSV and PNG) each sweep's trials."""
    for sweep in mlflow.search_runs(ids, "tags.stage = 'sweep'", order_by=["attributes.start_time ASC"], output_format="list"):
        table = trials_table(sweep)
        name = f"sweep-{sweep.info.run_id[:8]}"
        table.to_csv(folder / f"{name}.csv", index=False)
        if len(table):
            plot_sweep(table, sweep.data.tags["sweep_keys"].split(","), sweep.data.tags["sweep_metric"], folder / f"{name}.png")
        with pd.option_context("display.width", 200, "display.max_columns", None):
            print(f"\nsweep {sweep.info.run_id} ({sweep.data.tags['mlflow.runName']}, {sweep.info.status}), best first:")
            print(table.drop(columns="run_id").to_string(index=False) if len(table) else "no trials yet")
        print(f"saved {folder / name}.csv" + (f" and {folder / name}.png" if len(table) else ""))


def compare(experiments: list[str], out: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """Print and save the comparison of every pipeline run in ``experiments`` (default: all), then each sweep's trials."""
    mlflow.set_tracking_uri(tracking.tracking_uri(tracking_uri))
    ids = experiment_ids(experiments)
    runs = mlflow.search_runs(ids, "tags.stage = 'pipeline'", order_by=["attributes.start_time ASC"])
    result = table(runs) if len(runs) else pd.DataFrame()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    result.to_csv(folder / "comparison.csv", index=False)
    saved = [folder / "comparison.csv"]
    if len(runs):
        plot_curves(runs, folder / "learning_curves.png")
        saved.append(folder / "learning_curves.png")
        if tables := meta_test_tables(runs):
            classes_learned(meta_test_curves(tables)).savefig(folder / "classes_learned.png", dpi=100)
            saved.append(folder / "classes_learned.png")
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(result.to_string(index=False) if len(result) else "no pipeline runs found")
    print(f"saved {', '.join(map(str, saved))}")
    show_sweeps(ids, folder)
    return result
