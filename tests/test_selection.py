"""Selecting on validation (``train.select_on: val``): the best validated parameters are the trained model, patience
stops training, and a run interrupted and resumed selects as an unkilled one; and the one policy every ranking asks."""

import math

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipelines.config import load
from pipelines.selection import Metric
from pipelines.session import Session
from pipelines.stages import train as train_stage
from pipelines.stages.train import Checkpoint, train
from tests.conftest import start_local_ray

# Outer SGD at rate 0.2 on 4 tasks a step wanders: the validation figure goes up and down, and later ones are often worse
# than an earlier best (a higher rate would diverge, which stops training).
WANDERING = ["train.optimizer=sgd", "train.outer_lr=0.2", "train.checkpoint_every=1", "train.select_on=val"]
FAST = ["train.meta_batch=4", "train.compile=false", "cluster.workers=1", "eval.val_tasks=8", "eval.steps=[1]"]


def config(tmp_path, *overrides: str):
    return load("sinusoid", [*FAST, *WANDERING, f"train.checkpoint_dir={tmp_path}", *overrides])


@pytest.fixture(scope="module")
def driver(ray_session):
    """One worker for the module's runs, which differ only in what the driver does (the outer loop, validation)."""
    start_local_ray(ray_session)
    with Session.from_config(load("sinusoid", FAST), {"train": None, "val": None}) as shared:
        yield shared.driver


def session(cfg, driver) -> Session:
    """A fresh session of ``cfg`` (its initial parameters) on the module's worker."""
    return Session.from_config(cfg, {}, driver=lambda *args, **kwargs: driver)


def checkpoint(tmp_path, run_id: str, key: str) -> Checkpoint:
    return Checkpoint(tmp_path / f"{run_id}.pt", key)


def test_the_trained_model_is_the_best_validated_one_and_every_validation_is_logged_at_its_step(driver, tracking, tmp_path):
    cfg = config(tmp_path, "train.steps=5")
    trained, seen = session(cfg, driver), {}  # seen: steps done -> (validation figure, parameters)
    flat = trained.flat

    def record(done: int, metrics: dict[str, float]) -> None:
        seen[done] = metrics["val_post_adapt_loss"], flat.clone()

    with mlflow.start_run() as active:
        summary = train(trained, active.info.run_id, checkpoint(tmp_path, active.info.run_id, "k"), record)
    best = min(seen, key=lambda done: seen[done][0] if math.isfinite(seen[done][0]) else math.inf)
    assert best < 5  # the case this builds: the last step is worse than an earlier one
    assert summary["best_step"] == best and summary["best_val_post_adapt_loss"] == seen[best][0] and "stopped_at" not in summary
    torch.testing.assert_close(flat, seen[best][1], rtol=0, atol=0)
    assert not torch.equal(flat, seen[5][1])
    history = MlflowClient().get_metric_history(active.info.run_id, "val_post_adapt_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]


def test_patience_stops_training_and_a_run_interrupted_mid_validation_resumes_to_the_same_best(driver, tracking, tmp_path, monkeypatch):
    cfg = config(tmp_path, "train.steps=8", "train.patience=2")
    reference = session(cfg, driver)
    with mlflow.start_run() as active:
        summary = train(reference, active.info.run_id, checkpoint(tmp_path, active.info.run_id, "reference"))
    stopped = summary["stopped_at"]
    assert stopped == summary["best_step"] + 2 < 8  # the two validations after the best did not beat it
    assert sorted(m.step for m in MlflowClient().get_metric_history(active.info.run_id, "meta_loss")) == list(range(stopped))

    validate, calls = train_stage.evaluate, []

    def interrupted_at_the_second(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return validate(*args)

    monkeypatch.setattr(train_stage, "evaluate", interrupted_at_the_second)
    with mlflow.start_run() as active:
        with pytest.raises(KeyboardInterrupt):
            train(session(cfg, driver), active.info.run_id, checkpoint(tmp_path, active.info.run_id, "killed"))
        assert checkpoint(tmp_path, active.info.run_id, "killed").load().step == 1  # not step 2, whose validation it lacks
        monkeypatch.setattr(train_stage, "evaluate", validate)
        resumed = session(cfg, driver)
        again = train(resumed, active.info.run_id, checkpoint(tmp_path, active.info.run_id, "killed"))
    del summary["train_tasks_per_s"], again["train_tasks_per_s"]  # a speed, not a result
    assert again == summary
    torch.testing.assert_close(resumed.flat, reference.flat, rtol=0, atol=0)


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_nan_never_improves_and_never_blocks_a_finite_figure(higher_is_better):
    metric, nan = Metric("val_post_adapt_x", higher_is_better), math.nan
    good, bad = (0.9, 0.1) if higher_is_better else (0.1, 0.9)
    assert metric.improves(good, bad) and not metric.improves(bad, good) and not metric.improves(good, good)
    assert metric.improves(bad, None) and metric.improves(bad, nan) and metric.improves(bad, math.inf if not higher_is_better else -math.inf)
    assert not metric.improves(nan, None) and not metric.improves(nan, bad) and not metric.improves(nan, nan)
    table = pd.DataFrame({"val_post_adapt_x": [nan, bad, good, bad], "trial": ["a", "d", "c", "b"]})
    assert list(metric.best_first(table, then="trial").trial) == ["c", "b", "d", "a"]


def test_the_direction_is_the_algorithm_specs_and_selection_ranks_on_registers_validation_twin():
    accuracy = Metric.validation(load("omniglot", ["register.metric=eval_post_adapt_acc"]))
    assert accuracy == Metric("val_post_adapt_acc", higher_is_better=True) and accuracy.mode == "max"
    loss = Metric.validation(load("sinusoid"))
    assert loss == Metric("val_post_adapt_loss", higher_is_better=False) and loss.mode == "min"
    assert loss.rankable(math.nan) == math.inf and accuracy.rankable(math.nan) == -math.inf
