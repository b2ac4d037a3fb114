"""Durable runs: a driver killed with SIGKILL is resumed to exactly the parameters of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pipelines.cli import main
from pipelines.config import load
from pipelines.pipeline import resume, run
from pipelines.session import Session
from pipelines.stages.train import Checkpoint, train
from tests.conftest import ROOT
from tests.test_pipeline import child_runs, trained_params

CONFIG = ["train.steps=200", "train.meta_batch=4", "train.checkpoint_every=10", "eval.tasks=8", "experiment=resume", "train.compile=false"]


def cli(*args, cwd, ignoring_sigint: bool = False, **kwargs):
    """The CLI in a process of its own; ``ignoring_sigint``: started with SIGINT ignored, as a non-interactive shell
    starts a background job (``cmd &`` in a batch script)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    command = [sys.executable, "-m", "pipelines", *args]
    if ignoring_sigint:
        command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
    return subprocess.Popen(command, cwd=cwd, env=env, **kwargs)


def checkpoint_step(folder) -> int:
    files = list(folder.glob("*.pt")) if folder.exists() else []
    return torch.load(files[0], weights_only=True)["step"] if files else 0


def pipeline_runs():
    return mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'pipeline'", output_format="list")


def start_killable_run(workdir, steps_before_signal: int, args: list[str] | None = None, ignoring_sigint: bool = False):
    """A CLI run in ``workdir``, held (SIGSTOP) once it has checkpointed ``steps_before_signal`` steps, so that it
    is still mid-run however long the test takes before it signals it (``signal_held``)."""
    workdir.mkdir(exist_ok=True)
    args = args or ["run", "sinusoid", *[a for c in CONFIG for a in ("--set", c)]]
    driver = cli(*args, cwd=workdir, ignoring_sigint=ignoring_sigint, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while checkpoint_step(workdir / "checkpoints") < steps_before_signal and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGSTOP)
    assert driver.poll() is None, "the run ended before it could be signalled"
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    return driver


def signal_held(driver, signum: int) -> None:
    """``signum`` to a run that ``start_killable_run`` holds, delivered as it goes on."""
    driver.send_signal(signum)
    driver.send_signal(signal.SIGCONT)


@pytest.mark.slow
def test_sigkilled_driver_resumes_to_the_uninterrupted_parameters(ray_local, tracking, tmp_path):
    reference = trained_params(run(load("sinusoid", [*CONFIG, "experiment=reference"]), tracking))

    workdir = tmp_path / "killed"
    driver = start_killable_run(workdir, 50)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert 50 <= checkpoint_step(workdir / "checkpoints") < 200

    [parent] = pipeline_runs()
    assert parent.info.status == "RUNNING"  # what a SIGKILL leaves behind
    resumed = cli("resume", parent.info.run_id, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, out[-2000:]

    parent = mlflow.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED"
    assert len(pipeline_runs()) == 1
    stages = [r.data.tags["stage"] for r in child_runs(parent.info.run_id)]
    assert sorted(stages) == ["evaluate", "prepare", "register", "train"]  # the same stage runs, continued: no duplicates
    result = trained_params(parent.info.run_id)
    for k in reference:
        torch.testing.assert_close(result[k], reference[k], rtol=0, atol=1e-6)
    train_run = parent.data.tags["train_run_id"]
    steps = [m.step for m in MlflowClient().get_metric_history(train_run, "meta_loss")]
    assert sorted(steps) == list(range(200))  # every step logged exactly once across the kill


def test_rerun_with_unchanged_config_does_nothing_and_changed_eval_reuses_prepare_and_train(ray_local, tracking, capsys):
    fast = ["train.steps=3", "train.meta_batch=4", "eval.tasks=4", "train.compile=false"]
    first = run(load("sinusoid", fast), tracking)
    assert run(load("sinusoid", fast), tracking) == first
    assert "already finished" in capsys.readouterr().out

    second = run(load("sinusoid", [*fast, "eval.tasks=6"]), tracking)
    assert second != first
    out = capsys.readouterr().out
    assert "prepare: unchanged" in out and "train: unchanged" in out
    assert sorted(r.data.tags["stage"] for r in child_runs(second)) == ["evaluate", "register"]
    a, b = mlflow.get_run(first), mlflow.get_run(second)
    assert a.data.tags["train_run_id"] == b.data.tags["train_run_id"]
    assert a.data.metrics["eval_post_adapt_loss"] != b.data.metrics["eval_post_adapt_loss"]  # evaluated again, on 6 tasks

    forced = run(load("sinusoid", [*fast, "eval.tasks=6"]), tracking, force=("train",))
    assert sorted(r.data.tags["stage"] for r in child_runs(forced)) == ["evaluate", "register", "train"]


@pytest.mark.slow
def test_ctrl_c_checkpoints_marks_runs_killed_and_exits_nonzero(tmp_path):
    driver = start_killable_run(tmp_path / "interrupted", 30)
    signal_held(driver, signal.SIGINT)
    out = driver.communicate(timeout=60)[0].decode()
    assert driver.returncode == 130, out[-2000:]
    assert "interrupted" in out.splitlines()[-1]
    [parent] = pipeline_runs()
    assert parent.info.status == "KILLED"
    [train_run] = [r for r in child_runs(parent.info.run_id) if r.data.tags["stage"] == "train"]
    assert train_run.info.status == "KILLED"
    step = checkpoint_step(tmp_path / "interrupted" / "checkpoints")
    logged = [m.step for m in MlflowClient().get_metric_history(train_run.info.run_id, "meta_loss")]
    assert step >= 30 and sorted(logged) == list(range(step))  # the checkpoint and the metrics end together


def test_steps_logged_ahead_of_the_checkpoint_are_not_logged_again(ray_local, tracking, tmp_path):
    """A kill between writing a batch of metrics and writing the checkpoint: the resumed run skips those steps' logging."""
    config = load("sinusoid", ["train.steps=10", "train.meta_batch=4", "train.checkpoint_every=10", "train.compile=false"])
    with Session.from_config(config, {"train": None, "test": None}) as first, mlflow.start_run() as active:
        run_id = active.info.run_id
        at = Checkpoint(tmp_path / "k.pt", "k")
        train(first, run_id, at)  # checkpoint and metrics at step 10
        MlflowClient().log_batch(run_id, metrics=[Metric("meta_loss", 1.0, 0, step) for step in range(10, 14)])
        longer = Session.from_config(config.with_values({"train.steps": 20}), {}, driver=lambda *args, **kwargs: first.driver)
        train(longer, run_id, at)  # resumes at 10, steps 10-13 already logged
    steps = sorted(m.step for m in MlflowClient().get_metric_history(run_id, "meta_loss"))
    assert steps == list(range(20))


def test_many_steps_a_call_end_at_checkpoints_log_every_step_once_and_restart_the_group_from_new_parameters(ray_local, tracking, tmp_path):
    per_call = ["cluster.aggregation=allreduce", "cluster.steps_per_call=3", f"train.checkpoint_dir={tmp_path}"]
    config = load("sinusoid", ["train.steps=6", "train.meta_batch=4", "train.checkpoint_every=4", "train.compile=false", *per_call])
    with Session.from_config(config, {"train": None, "test": None}) as first:
        driver = first.driver
        calls, steps = [], driver.steps
        driver.steps = lambda flat, optimizer, first, count: calls.append((first, count)) or steps(flat, optimizer, first, count)
        trained = []
        for _ in range(2):  # the second run starts from the initial parameters, which the group no longer holds
            session = Session.from_config(config, {}, driver=lambda *args, **kwargs: driver)
            with mlflow.start_run() as active:
                train(session, active.info.run_id, Checkpoint(tmp_path / f"{active.info.run_id}.pt", "k"))
            trained.append(session.flat)
            logged = [m.step for m in MlflowClient().get_metric_history(active.info.run_id, "meta_loss")]
            assert sorted(logged) == list(range(6))
            assert checkpoint_step(tmp_path) == 6
            (tmp_path / f"{active.info.run_id}.pt").unlink()
    assert calls == [(0, 3), (3, 1), (4, 2)] * 2  # no call runs past a checkpoint
    assert not torch.equal(trained[0], Session.from_config(config, {}).flat)
    torch.testing.assert_close(trained[1], trained[0], rtol=0, atol=0)


SESSION_STEPS = Session.steps  # as no test has patched it


def interrupt_at(monkeypatch, step: int) -> list[tuple[int, int]]:
    """Session steps recorded, and a Ctrl-C when training reaches ``step``."""
    calls, steps = [], SESSION_STEPS

    def recorded(self, first: int, count: int):
        if first >= step:
            raise KeyboardInterrupt
        calls.append((first, count))
        return steps(self, first, count)

    monkeypatch.setattr(Session, "steps", recorded)
    return calls


SHORT = ["train.steps=6", "train.checkpoint_every=2", "train.meta_batch=4", "eval.tasks=4", "train.compile=false"]


def test_a_resume_from_elsewhere_continues_from_the_recorded_checkpoint_and_one_whose_checkpoint_is_gone_stops_unless_restarted(
    ray_local, tracking, tmp_path, monkeypatch, capsys
):
    interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run(load("sinusoid", SHORT), tracking)  # checkpoints under ./checkpoints, relative to tmp_path
    [parent] = pipeline_runs()
    [train_run] = [r for r in child_runs(parent.info.run_id) if r.data.tags["stage"] == "train"]
    recorded = train_run.data.tags["checkpoint"]
    assert recorded == str(tmp_path / "checkpoints" / f"{train_run.info.run_id}.pt")

    monkeypatch.chdir((tmp_path / "elsewhere").mkdir() or tmp_path / "elsewhere")
    calls = interrupt_at(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        resume(parent.info.run_id, tracking)
    assert calls == [(2, 1), (3, 1)]  # from the checkpoint, not from step 0

    Path(recorded).unlink()  # as on another machine
    capsys.readouterr()
    calls = interrupt_at(monkeypatch, 6)
    assert main(["resume", parent.info.run_id, "--tracking-uri", tracking]) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]  # after MLflow's own log lines
    assert line.startswith("error: train run") and recorded in line and "--restart" in line and "Traceback" not in err
    assert calls == []  # nothing trained

    assert main(["resume", parent.info.run_id, "--restart", "--tracking-uri", tracking]) == 0
    assert calls[0] == (0, 1) and mlflow.get_run(parent.info.run_id).info.status == "FINISHED"
    assert sorted(m.step for m in MlflowClient().get_metric_history(train_run.info.run_id, "meta_loss")) == list(range(6))
