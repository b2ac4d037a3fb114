"""Selecting on validation (``train.select_on: val``): the best validated parameters are the trained model, patience
stops training, and a run interrupted and resumed selects as an unkilled one."""

import math

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from cluster.driver import Driver
from meta_core.flat import flatten, layout_of
from pipelines.build import worker_setup
from pipelines.config import load
from pipelines.pipeline import fresh_params
from pipelines.stages import train as train_stage
from pipelines.stages.train import train
from tests.conftest import start_local_ray

# Outer SGD at rate 1 diverges: the first validation is the best, every later one worse (or NaN).
DIVERGING = ["train.optimizer=sgd", "train.outer_lr=1.0", "train.checkpoint_every=1", "train.select_on=val"]
FAST = ["train.meta_batch=4", "train.compile=false", "cluster.workers=1", "eval.val_tasks=8", "eval.steps=[1]"]


def config(tmp_path, *overrides: str):
    return load("sinusoid", [*FAST, *DIVERGING, f"train.checkpoint_dir={tmp_path}", *overrides])


@pytest.fixture(scope="module")
def driver(ray_session):
    """One worker for the module's runs, which differ only in what the driver does (the outer loop, validation)."""
    start_local_ray(ray_session)
    cfg = load("sinusoid", FAST)
    driver = Driver(worker_setup(cfg), cfg.cluster, {"train": None, "val": None}, layout_of(fresh_params(cfg)))
    yield driver
    driver.shutdown()


def test_the_trained_model_is_the_best_validated_one_and_every_validation_is_logged_at_its_step(driver, tracking, tmp_path):
    cfg = config(tmp_path, "train.steps=5")
    flat, seen = flatten(fresh_params(cfg)).clone(), {}  # seen: steps done -> (validation figure, parameters)

    def record(done: int, metrics: dict[str, float]) -> None:
        seen[done] = metrics["val_post_adapt_loss"], flat.clone()

    with mlflow.start_run() as active:
        summary = train(cfg, driver, flat, active.info.run_id, "k", record)
    best = min(seen, key=lambda done: seen[done][0] if math.isfinite(seen[done][0]) else math.inf)
    assert best < 5  # the case this builds: the last step is worse than an earlier one
    assert summary["best_step"] == best and summary["best_val_post_adapt_loss"] == seen[best][0] and "stopped_at" not in summary
    torch.testing.assert_close(flat, seen[best][1], rtol=0, atol=0)
    assert not torch.equal(flat, seen[5][1])
    history = MlflowClient().get_metric_history(active.info.run_id, "val_post_adapt_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]


def test_patience_stops_training_and_a_run_interrupted_mid_validation_resumes_to_the_same_best(driver, tracking, tmp_path, monkeypatch):
    cfg = config(tmp_path, "train.steps=8", "train.patience=2")
    reference = flatten(fresh_params(cfg)).clone()
    with mlflow.start_run() as active:
        summary = train(cfg, driver, reference, active.info.run_id, "reference")
    assert summary["stopped_at"] == 3 and summary["best_step"] == 1  # the validations at 2 and 3 did not beat step 1's
    assert sorted(m.step for m in MlflowClient().get_metric_history(active.info.run_id, "meta_loss")) == [0, 1, 2]

    validate, calls = train_stage.evaluate, []

    def interrupted_at_the_second(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return validate(*args)

    monkeypatch.setattr(train_stage, "evaluate", interrupted_at_the_second)
    with mlflow.start_run() as active:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, driver, flatten(fresh_params(cfg)).clone(), active.info.run_id, "killed")
        assert torch.load(tmp_path / f"{active.info.run_id}.pt", weights_only=True)["step"] == 1  # not step 2, whose validation it lacks
        monkeypatch.setattr(train_stage, "evaluate", validate)
        resumed = flatten(fresh_params(cfg)).clone()
        again = train(cfg, driver, resumed, active.info.run_id, "killed")
    del summary["train_tasks_per_s"], again["train_tasks_per_s"]  # a speed, not a result
    assert again == summary
    torch.testing.assert_close(resumed, reference, rtol=0, atol=0)
