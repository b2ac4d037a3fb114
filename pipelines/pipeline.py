"""The pipeline run: one MLflow parent run, one child run per stage."""

import contextlib

import mlflow

from cluster.driver import Driver, connect
from meta_core.build import build_learner
from meta_core.flat import flatten, layout_of, unflatten
from meta_core.models import init_params
from pipelines import tracking
from pipelines.artifacts import log_trained
from pipelines.stages.evaluate import evaluate
from pipelines.stages.train import train


def load_splits(config: dict) -> dict:
    """Arrays the workers draw tasks from: nothing for sinusoids, train/test images otherwise."""
    if config["data"]["name"] == "sinusoid":
        return {"train": None, "test": None}
    from data.omniglot import load_splits as omniglot_splits

    return omniglot_splits(config["data"]["source"], config["seed"])


@contextlib.contextmanager
def stage_run(name: str, **kwargs):
    """An MLflow run that ends FINISHED, KILLED on Ctrl-C, or FAILED on any other error."""
    run = mlflow.start_run(run_name=name, **kwargs)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def run(config: dict, tracking_uri: str | None = None) -> str:
    """Train then evaluate; returns the pipeline's MLflow run id."""
    mlflow.set_tracking_uri(tracking.tracking_uri(tracking_uri))
    experiment = mlflow.set_experiment(config["experiment"])
    splits = load_splits(config)
    algo = build_learner(config)
    params = algo.init(init_params(algo.model, config["seed"]))
    layout = layout_of(params)
    flat = flatten(params).clone()
    connect(config["cluster"]["address"])
    driver = Driver(config, splits, layout)
    try:
        with stage_run(tracking.run_name(config), tags=tracking.tags(config)) as parent:
            tracking.log_config(config)
            with stage_run("train", nested=True, tags={"stage": "train"}) as child:
                train(config, driver, flat, child.info.run_id)
                log_trained(config, unflatten(flat.detach(), layout))
            with stage_run("evaluate", nested=True, tags={"stage": "evaluate"}):
                metrics, table = evaluate(config, driver, flat)
                mlflow.log_metrics(metrics)
                mlflow.log_table(table, "evaluation.json")
            mlflow.log_metrics(metrics)
    finally:
        driver.shutdown()
    print(summary(metrics))
    print(f"MLflow UI: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()} --host 127.0.0.1 --port 5000")
    print(f"  then open http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs")
    return parent.info.run_id


def summary(metrics: dict[str, float]) -> str:
    lines = ["evaluation (mean +- 95% interval):"]
    for name in ("pre_adapt", "post_adapt"):
        for metric in ("loss", "acc"):
            key = f"eval_{name}_{metric}"
            if key in metrics:
                lines.append(f"  {name:<10} {metric}: {metrics[key]:.4f} +- {metrics[key + '_ci95']:.4f}")
    return "\n".join(lines)
