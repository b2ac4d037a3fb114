"""Sweeps: search spaces checked before any trial, ASHA over tracked trials, the best chosen on validation, resumed after a kill."""

import functools
import json
import os
import shlex
import signal
import threading
import time

import mlflow
import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.driver import Driver
from cluster.worker import MetaWorker
from pipelines import sweep
from pipelines.cli import main
from pipelines.compare import compare
from pipelines.config import ConfigError, load
from pipelines.session import Session
from pipelines.space import read_space, sweep_config
from pipelines.submit import entrypoint
from pipelines.tracking import load_yaml_artifact
from tests.cluster_helpers import config
from tests.conftest import ROOT
from tests.test_pipeline import child_runs

SHORT = ["train.meta_batch=4", "train.compile=false", "cluster.workers=1", "eval.val_tasks=20", "experiment=sweep"]
METRIC = "val_post_adapt_loss"


def write_space(folder, text: str) -> str:
    path = folder / "space.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "space, named",
    [
        ("algorithm.inner_lrr: {loguniform: [0.01, 1.0]}", "'algorithm.inner_lrr': not an option of algorithm 'maml'"),
        ("algorithm.name: {choice: []}", "'algorithm.name': choice needs a non-empty list"),
        ("algorithm.inner_lr: {loguniform: [1.0, 0.01]}", "'algorithm.inner_lr': loguniform needs low < high"),
        ("algorithm.inner_lr: {choice: [0.1, -1]}", "'algorithm.inner_lr': expected a positive number, got -1"),
        ("algorithm.name: {choice: [maml, protonet]}", "'algorithm.name': 'protonet' learns classification tasks"),
        ("algorithm.inner_lr: {normal: [0, 1]}", "'algorithm.inner_lr': expected one of {choice: ...}"),
        ("cluster.workers: {choice: [1, 2]}", "'cluster.workers' cannot be searched"),
        ("train.steps: 0\nalgorithm.inner_lr: {uniform: [0.1, 1]}", "'train.steps': expected a positive integer"),
    ],
)
def test_a_bad_space_exits_with_one_line_before_anything_starts(tmp_path, monkeypatch, capsys, space, named):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "sinusoid", "--space", write_space(tmp_path, space)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'space.yaml'}: ") and named in line
    assert [p.name for p in tmp_path.iterdir()] == ["space.yaml"]  # no store, no checkpoint: nothing started


def test_a_prepared_dataset_without_a_validation_split_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "omniglot", "--space", write_space(tmp_path, "algorithm.inner_lr: {loguniform: [0.1, 1.0]}")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "'data.val_size'" in line and "validation split" in line


def test_the_best_config_prints_as_a_run_command_that_rebuilds_it():
    best = load("sinusoid").with_values({"algorithm.inner_lr": 1e-05, "algorithm.name": "fomaml", "eval.steps": [1, 2], "sweep.reduction_factor": 3})
    words = shlex.split(sweep.run_command("sinusoid", best))
    sets = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    assert words[:5] == ["python", "-m", "pipelines", "run", "sinusoid"]
    assert sorted(sets) == ["algorithm.inner_lr=1.0e-05", "algorithm.name=fomaml", "eval.steps=[1, 2]"]  # sweep.* keys do not matter to run
    assert load("sinusoid", [*sets, "sweep.reduction_factor=3"]) == best


def test_the_shipped_spaces_are_valid():
    space = read_space(str(ROOT / "pipelines/sweeps/sinusoid.yaml"))
    assert list(space.searched) == ["algorithm.inner_lr"] and sweep_config(load("sinusoid"), space).cluster.workers == 1
    omniglot = sweep_config(load("omniglot"), read_space(str(ROOT / "pipelines/sweeps/omniglot.yaml")))
    assert omniglot.data.val_size == 0.2 and omniglot.sweep.trial_steps == 500  # validation characters carved from the training ones


def test_submit_sends_a_sweep_as_one_job_after_checking_its_space(tmp_path, capsys):
    words = shlex.split(entrypoint("sinusoid", ["train.steps=5"], str(ROOT / "pipelines/sweeps/sinusoid.yaml"), ["--trials", "4", "--finish"]))
    assert words[3:7] == ["sweep", "--space", "pipelines/sweeps/sinusoid.yaml", "--trials"]
    assert words[7:] == ["4", "--finish", "pipelines/configs/sinusoid.yaml", "--set=train.steps=5"]
    bad = write_space(tmp_path, "algorithm.inner_lr: {loguniform: [0, 1]}")
    assert main(["submit", "sinusoid", "--space", bad, "--address", "http://127.0.0.1:9", "--tracking-uri", "sqlite:///x.db"]) == 2
    assert "loguniform needs 0 < low" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="must be inside"):
        entrypoint("sinusoid", [], bad, [])


class PlacedWorker(MetaWorker):
    def placement_group(self) -> str:
        return ray.get_runtime_context().get_placement_group_id()


def test_a_trial_places_its_workers_in_its_placement_group(ray_local):
    cfg = config("cluster.workers=2")
    group = placement_group([{"CPU": 1}, {"CPU": 1}])
    ray.get(group.ready())
    placed = functools.partial(Driver, worker_cls=PlacedWorker)
    try:
        with Session.from_config(cfg, {"train": None}, PlacementGroupSchedulingStrategy(group), driver=placed) as session:
            assert ray.get([w.placement_group.remote() for w in session.driver.workers]) == [group.id.hex()] * 2
    finally:
        remove_placement_group(group)


@pytest.mark.slow
def test_asha_stops_trials_early_every_trial_is_a_child_run_and_the_best_validation_figure_wins(ray_local, tracking, tmp_path, capsys):
    # Two learning rates that learn, then two that barely move: those fall behind at the first rung.
    space = write_space(tmp_path, "train.outer_lr: {grid: [0.01, 0.003, 1.0e-7, 1.0e-8]}\nsweep.trial_steps: 40\ntrain.checkpoint_every: 10\n")
    run_id = sweep.start("sinusoid", SHORT, space, samples=1, max_concurrent=None, finish=False, tracking_uri=tracking)

    parent = mlflow.get_run(run_id)
    assert parent.info.status == "FINISHED"
    assert {"stage": "sweep", "sweep_metric": METRIC, "sweep_keys": "train.outer_lr", "algorithm": "maml"}.items() <= parent.data.tags.items()
    trials = child_runs(run_id)
    assert len(trials) == 4 and {t.info.status for t in trials} == {"FINISHED"} and {t.data.tags["stage"] for t in trials} == {"trial"}
    outcomes = {t.data.tags["trial_status"] for t in trials}
    assert outcomes == {"completed", "stopped_early"}
    for t in trials:
        curve = [m.step for m in MlflowClient().get_metric_history(t.info.run_id, METRIC)]
        assert curve == list(range(10, curve[-1] + 1, 10)) and (curve[-1] == 40) == (t.data.tags["trial_status"] == "completed")
        assert t.data.tags["splits"] == "train,val"  # the trial's workers were never given the test split
        assert not [name for name in t.data.metrics if name.startswith("eval_")]

    best = min(trials, key=lambda t: t.data.metrics[METRIC])
    chosen = load_yaml_artifact(run_id, "best_config.yaml")
    assert chosen["train"]["outer_lr"] == json.loads(best.data.tags["trial_values"])["train.outer_lr"]
    assert chosen["train"]["steps"] == load("sinusoid").train.steps  # --finish trains the full length
    assert parent.data.metrics[f"best_{METRIC}"] == best.data.metrics[METRIC]
    assert f"--set train.outer_lr={sweep.yaml_value(chosen['train']['outer_lr'])}" in capsys.readouterr().out

    compare(["sweep"], str(tmp_path / "out"), tracking)
    table = (tmp_path / "out" / f"sweep-{run_id[:8]}.csv").read_text().splitlines()
    assert table[0].split(",")[:3] == ["trial", "train.outer_lr", METRIC] and table[1].startswith(best.data.tags["trial_id"])
    assert (tmp_path / "out" / f"sweep-{run_id[:8]}.png").read_bytes()[:4] == b"\x89PNG"


def interrupt_once_a_trial_finished(deadline_s: float) -> None:
    """Ctrl-C to this process, from another thread, once a trial run is FINISHED (Tune, running the sweep, catches it)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        finished = "tags.stage = 'trial' and attributes.status = 'FINISHED'"
        if mlflow.search_runs(search_all_experiments=True, filter_string=finished, output_format="list"):
            os.kill(os.getpid(), signal.SIGINT)
            return
        time.sleep(0.2)


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_rerunning_its_finished_trial(ray_local, tracking, tmp_path):
    # One trial at a time; the first barely learns and the second does, so ASHA lets the second run to its end.
    space = write_space(tmp_path, "train.outer_lr: {grid: [1.0e-8, 0.01]}\nsweep.trial_steps: 100\ntrain.checkpoint_every: 10\n")
    threading.Thread(target=interrupt_once_a_trial_finished, args=(300,), daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        sweep.start("sinusoid", SHORT, space, samples=1, max_concurrent=1, finish=False, tracking_uri=tracking)
    [parent] = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'sweep'", output_format="list")
    assert parent.info.status == "KILLED"
    before = {t.data.tags["trial_id"]: t for t in child_runs(parent.info.run_id)}
    [finished] = [t for t in before.values() if t.info.status == "FINISHED"]
    assert all(t.info.status == "KILLED" for t in before.values() if t is not finished)  # nothing left RUNNING

    sweep.resume(parent.info.run_id, finish=False, tracking_uri=tracking)
    assert [r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'sweep'", output_format="list")] == [
        parent.info.run_id
    ]
    assert mlflow.get_run(parent.info.run_id).info.status == "FINISHED"
    trials = {t.data.tags["trial_id"]: t for t in child_runs(parent.info.run_id)}
    assert len(trials) == 2 and {t.data.tags["trial_status"] for t in trials.values()} == {"completed"}
    again = trials[finished.data.tags["trial_id"]]
    assert (again.info.start_time, again.info.end_time) == (finished.info.start_time, finished.info.end_time)  # not run again
    [resumed] = [t for t in trials.values() if t.info.run_id != finished.info.run_id]
    assert sorted(m.step for m in MlflowClient().get_metric_history(resumed.info.run_id, "meta_loss")) == list(range(100))
    assert [m.step for m in MlflowClient().get_metric_history(resumed.info.run_id, METRIC)] == list(range(10, 101, 10))
