"""The run command end to end: distributed training, evaluation and what MLflow records."""

import mlflow
import torch
from mlflow.tracking import MlflowClient

from pipelines.cli import main
from pipelines.config import load
from pipelines.pipeline import STAGES, run, stage_key

FAST = ["train.steps=6", "train.meta_batch=6", "eval.tasks=12"]


def trained_params(run_id: str) -> dict:
    train_run_id = mlflow.get_run(run_id).data.tags["train_run_id"]
    path = MlflowClient().download_artifacts(train_run_id, "params.pt")
    return torch.load(path, weights_only=True)


def child_runs(run_id: str):
    parent = mlflow.get_run(run_id)
    return mlflow.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'", output_format="list")


def test_a_run_is_distributed_and_tracked_stage_by_stage(ray_local, tracking):
    """With MAML; the distribution and tracking code never knows the algorithm (test_compare runs Reptile, the
    families and generative tests the others, test_aggregation checks the distributed sums)."""
    algorithm = "maml"
    run_id = run(load("sinusoid", [*FAST, f"algorithm.name={algorithm}", "train.pre_adapt_every=5"]), tracking)
    parent = mlflow.get_run(run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["algorithm.name"] == algorithm
    assert parent.data.tags["algorithm"] == algorithm
    assert {"eval_pre_adapt_loss", "eval_post_adapt_loss", "eval_post_adapt_loss_ci95"} <= parent.data.metrics.keys()
    stages = {r.data.tags["stage"]: r for r in child_runs(run_id)}
    assert set(stages) == {"prepare", "train", "evaluate", "register"}
    history = MlflowClient().get_metric_history(stages["train"].info.run_id, "meta_loss")
    assert [m.step for m in history] == list(range(6))
    assert {"tasks_per_s", "step_s", "pre_adapt_loss", "post_adapt_loss"} <= stages["train"].data.metrics.keys()
    pre = MlflowClient().get_metric_history(stages["train"].info.run_id, "pre_adapt_loss")
    assert [m.step for m in pre] == [0, 5]  # an extra forward pass: taken every train.pre_adapt_every steps


def test_no_stage_reads_the_published_figure_and_only_training_that_selects_on_validation_reads_the_validation_tasks():
    outputs = {stage.name: {} for stage in STAGES}

    def keys(*overrides: str) -> dict[str, str]:
        return {stage.name: stage_key(stage, load("omniglot", ["data.val_size=0.2", *overrides]), outputs) for stage in STAGES}

    last, selecting = keys(), keys("train.select_on=val")
    paper = ("published.acc=0.9", "published.source=P", "published.ci95=0.01", "published.steps=1", "published.tasks=600")
    assert keys(*paper) == last  # editing it retrains and re-evaluates nothing
    assert keys("eval.val_tasks=7") == last
    changed = keys("train.select_on=val", "eval.val_tasks=7")
    assert {name for name in last if changed[name] != selecting[name]} == {"train"}


def test_a_diverged_run_stops_with_one_line_naming_the_step_fails_its_runs_and_registers_nothing(ray_local, tracking, capsys):
    args = ["run", "sinusoid", "--tracking-uri", tracking, "--set", "algorithm.inner_lr=.inf", "--set", "train.steps=2", "--set", "eval.tasks=4"]
    assert main(args) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: train: meta_loss is nan at step 0") and "outer_lr" in line and "inner_lr" in line and "Traceback" not in err
    [parent] = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'pipeline'", output_format="list")
    assert parent.info.status == "FAILED"
    assert {(r.data.tags["stage"], r.info.status) for r in child_runs(parent.info.run_id)} == {("prepare", "FINISHED"), ("train", "FAILED")}
    assert MlflowClient().search_registered_models() == []
