"""Bad input, signals and a second process: each stops in one line naming what is wrong, and leaves no run RUNNING.

Covered here:
  config    seed beyond 2**32 - 1; register.model_name with '/' or ':'; train.checkpoint_dir or data.cache_dir
            under a regular file; a tracking URI MLflow has no store for
  sweep     a range with an infinite end; uniform or loguniform for an integer key
  runs      episodes of runs:/<a run that does not exist>; resume after the run's experiment was renamed (and no
            empty experiment of the old name); a second `run` of a config whose run a live process drives (refused),
            while a run whose owner died resumes; SIGTERM stops as Ctrl-C (checkpoint, runs KILLED, one line, resumable)
  cluster   workers the cluster's nodes cannot place (refused before any worker starts)
  serving   adapt_steps beyond the registered maximum; NaN or inf in x, inf in a regression y (400, the row named)

Covered elsewhere:
  test_config       unknown keys, wrong types and ranges, a missing or malformed config file, --set without '='
  test_cli          a bad --set value exits 2 with one line, leaving nothing behind
  test_sweep        malformed spaces, unsearchable keys, a prepared set without a validation split
  test_data         corrupt and zip-slip archives, non-images, empty classes, too few samples or classes, held-out
                    counts, a missing label column, NaN features, a wrong checksum, a stalled download, no network
  test_benchmark_sets  a bad copy of a standard set
  test_register     register.metric and register.alias; requests with wrong widths, no queries, unlabelled support,
                    negative adapt_steps
  test_serving      a served request with the wrong width (400)
  test_compare      an unknown experiment
  test_families, test_specs, test_perf_paths   an algorithm's or model's own options, and settings that cannot go together
  test_cluster_faults  a worker that cannot start stops the run at once
  test_resume       Ctrl-C; a SIGKILLed driver resumes to the uninterrupted parameters
"""

import os
import signal
import subprocess
import sys
import types

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cluster import pool as cluster_pool
from cluster.config import ClusterConfig
from meta_core.tasks import SinusoidTasks
from pipelines import lease, serving
from pipelines.artifacts import Trained
from pipelines.build import build_learner, check_placeable
from pipelines.cli import main
from pipelines.config import ConfigError, digest, load
from pipelines.pipeline import resume, run
from pipelines.stages.register import register_stage
from tests.conftest import ROOT
from tests.test_pipeline import child_runs
from tests.test_resume import checkpoint_step, cli, pipeline_runs, signal_held, start_killable_run

TINY = ["train.steps=2", "train.meta_batch=2", "eval.tasks=4", "eval.steps=[1]", "train.compile=false", "cluster.workers=1"]


def sets(*overrides: str) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def one_line_error(capsys) -> str:
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ")
    return line


@pytest.mark.parametrize(
    "override, named",
    [
        ("seed=100000000000000000000000", "'seed': expected an integer from 0 to 2**32 - 1"),
        ("register.model_name=a/b:c", "'register.model_name': expected a name without '/' or ':'"),
        ("train.checkpoint_dir=file/checkpoints", "'train.checkpoint_dir': expected a folder path, not under a file"),
        ("data.cache_dir=file/cache", "'data.cache_dir': expected a folder path, not under a file"),
    ],
)
def test_values_that_failed_after_work_was_done_are_refused_before_it(tmp_path, monkeypatch, capsys, override, named):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("a regular file")
    assert main(["run", "sinusoid", *sets(*TINY, override), "--tracking-uri", f"sqlite:///{tmp_path / 'runs.db'}"]) == 2
    assert named in one_line_error(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]  # no store, no checkpoint


def test_an_unknown_tracking_uri_scheme_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "sinusoid", *sets(*TINY), "--tracking-uri", "bogus://nowhere"]) == 2
    assert "--tracking-uri bogus://nowhere: not a tracking store" in one_line_error(capsys)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://nowhere")
    assert main(["compare"]) == 2
    assert "MLFLOW_TRACKING_URI bogus://nowhere" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "space, named",
    [
        ("algorithm.inner_lr: {uniform: [0.001, .inf]}", "'algorithm.inner_lr': uniform needs finite ends, got [0.001, inf]"),
        ("algorithm.inner_lr: {loguniform: [-.inf, 1]}", "'algorithm.inner_lr': loguniform needs finite ends"),
        ("algorithm.inner_steps: {uniform: [1, 3]}", "'algorithm.inner_steps': expected a non-negative integer, got 1.0 (uniform draws real numbers"),
    ],
)
def test_a_space_tune_would_refuse_later_is_refused_before_anything_starts(tmp_path, monkeypatch, capsys, space, named):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(space)
    assert main(["sweep", "sinusoid", *sets(*TINY), "--space", str(tmp_path / "space.yaml")]) == 2
    assert named in one_line_error(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["space.yaml"]


def test_episodes_of_a_missing_run_is_one_line(tracking, tmp_path, capsys):
    (tmp_path / "episodes" / "run01").mkdir(parents=True)
    assert main(["episodes", "runs:/0123456789abcdef", str(tmp_path / "episodes"), "--tracking-uri", tracking]) == 2
    assert "runs:/0123456789abcdef: no such run in" in one_line_error(capsys)
    with mlflow.start_run(tags={"stage": "evaluate"}) as other:
        pass
    assert main(["episodes", f"runs:/{other.info.run_id}", str(tmp_path / "episodes"), "--tracking-uri", tracking]) == 2
    assert "a 'evaluate' run, without params.pt and config.yaml" in one_line_error(capsys)


def test_workers_the_cluster_cannot_place_are_refused_before_any_starts(ray_local, tracking, monkeypatch):
    with pytest.raises(ConfigError, match=r"config key 'cluster': 2 workers of \{'CPU': 8\} each do not fit .*it places 0"):
        check_placeable(ClusterConfig(workers=2, num_cpus=8))
    with pytest.raises(ConfigError, match=r"it places 2"):
        check_placeable(ClusterConfig(workers=3, num_cpus=2))  # the local Ray has 4 CPUs
    check_placeable(ClusterConfig(workers=2, num_cpus=2))
    monkeypatch.setattr(cluster_pool, "STARTUP_S", 5)  # what a worker that never starts would wait for otherwise
    with pytest.raises(ConfigError, match="do not fit"):
        run(load("sinusoid", [*TINY, "cluster.num_cpus=8"]), tracking)
    assert [r.info.status for r in pipeline_runs()] == ["FAILED"]
    assert "RUNNING" not in {r.info.status for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}


def test_a_run_driven_by_a_live_process_is_not_joined(tracking, capsys):
    config = load("sinusoid", TINY)
    mlflow.set_experiment(config.experiment)
    with mlflow.start_run(run_name="pipeline", tags={"stage": "pipeline", "config_digest": digest(config.as_dict())}) as live:
        mlflow.log_dict(config.as_dict(), "config.yaml")
        with lease.held(live.info.run_id):
            owner = lease.owner_of(mlflow.get_run(live.info.run_id))
            assert owner["pid"] == os.getpid()
            for command in (["run", "sinusoid", *sets(*TINY)], ["resume", live.info.run_id]):
                capsys.readouterr()  # what MLflow logged so far
                assert main([*command, "--tracking-uri", tracking]) == 2
                line = one_line_error(capsys)
                assert f"pipeline run {live.info.run_id} is running in process {os.getpid()}" in line and "resume" in line
            assert child_runs(live.info.run_id) == []  # nothing trained inside it
    assert lease.owner_of(mlflow.get_run(live.info.run_id)) is None  # ended: no lease


DIES_HOLDING_THE_LEASE = """
import os, sys, mlflow
from pipelines import lease
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("before")
with mlflow.start_run(tags=dict(stage="pipeline", **lease.tags())) as run, lease.held(run.info.run_id):
    mlflow.log_text(sys.stdin.read(), "config.yaml")
    print(run.info.run_id, flush=True)
    os._exit(0)  # as a SIGKILL would: the run stays RUNNING, its lease names a process that is gone
"""


def test_a_run_whose_owner_died_resumes_in_its_experiment_even_after_a_rename(ray_local, tracking):
    config = load("sinusoid", [*TINY, "experiment=before"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.run(
        [sys.executable, "-c", DIES_HOLDING_THE_LEASE, tracking], input=yaml.safe_dump(config.as_dict()), capture_output=True, text=True, env=env
    )
    run_id = child.stdout.strip()
    assert mlflow.get_run(run_id).info.status == "RUNNING" and lease.OWNER in mlflow.get_run(run_id).data.tags, child.stderr
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name("before").experiment_id
    client.rename_experiment(experiment_id, "after")

    assert resume(run_id, tracking) == run_id
    finished = mlflow.get_run(run_id)
    assert finished.info.status == "FINISHED" and finished.info.experiment_id == experiment_id
    assert sorted(r.data.tags["stage"] for r in child_runs(run_id)) == ["evaluate", "prepare", "register", "train"]
    assert client.get_experiment_by_name("before") is None  # no empty experiment under the old name


LONG = [
    "train.steps=1000",
    "train.meta_batch=2",
    "train.checkpoint_every=10",
    "eval.tasks=4",
    "eval.steps=[1]",
    "train.compile=false",
    "cluster.workers=1",
]


@pytest.mark.slow
def test_a_second_run_of_a_running_config_is_refused_and_sigterm_stops_as_ctrl_c_does(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # started as a batch script's background job is, with SIGINT ignored: SIGTERM must stop it all the same
    driver = start_killable_run(tmp_path, 10, ["run", "sinusoid", *sets(*LONG)], ignoring_sigint=True)
    [parent] = pipeline_runs()
    capsys.readouterr()
    assert main(["run", "sinusoid", *sets(*LONG), "--tracking-uri", uri]) == 2  # the same config, while the first trains
    assert f"pipeline run {parent.info.run_id} is running in process {driver.pid}" in one_line_error(capsys)

    signal_held(driver, signal.SIGTERM)
    out = driver.communicate(timeout=120)[0].decode()
    assert driver.returncode == 130, out[-2000:]
    assert out.strip().splitlines()[-1] == "interrupted: checkpoint written, runs marked KILLED"
    [train_run] = [r for r in child_runs(parent.info.run_id) if r.data.tags["stage"] == "train"]
    assert mlflow.get_run(parent.info.run_id).info.status == "KILLED" and train_run.info.status == "KILLED"
    assert 10 <= checkpoint_step(tmp_path / "checkpoints") < 1000

    resumed = cli("resume", parent.info.run_id, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, out[-2000:]
    assert f"continuing pipeline run {parent.info.run_id}" in out
    assert mlflow.get_run(parent.info.run_id).info.status == "FINISHED" and len(pipeline_runs()) == 1
    logged = sorted(m.step for m in MlflowClient().get_metric_history(train_run.info.run_id, "meta_loss"))
    assert logged == list(range(1000))  # continued from the checkpoint: every step once


# -- serving ------------------------------------------------------------------------------------------------------
def trained_folder(folder, inner_steps: int = 2):
    """What a train stage logs (params.pt, config.yaml), for a sinusoid learner's initial parameters."""
    config = load("sinusoid", [f"algorithm.inner_steps={inner_steps}"])
    folder.mkdir(parents=True)
    torch.save(build_learner(config).initial_params(0), folder / "params.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(config.as_dict()))
    return folder


def served(tmp_path, model_config: dict | None, inner_steps: int = 2) -> serving.FewShotModel:
    """The served model on a sinusoid learner's initial parameters, loaded as `mlflow models serve` loads it."""
    model = serving.FewShotModel()
    folder = trained_folder(tmp_path / serving.TRAINED, inner_steps)
    model.load_context(types.SimpleNamespace(artifacts={serving.TRAINED: str(folder)}, model_config=model_config))
    return model


def sinusoid_request():
    task = SinusoidTasks(shots=5, queries=4).sample(np.random.default_rng(0))
    return serving.request(task.support_x.numpy(), task.support_y.numpy().ravel(), task.query_x.numpy())


def refused(model, frame, params=None) -> str:
    with pytest.raises(MlflowException) as error:
        model.predict(None, frame, params)
    assert error.value.get_http_status_code() == 400
    assert "\n" not in error.value.message
    return error.value.message


def test_adapt_steps_beyond_the_registered_maximum_is_a_400(tmp_path):
    frame = sinusoid_request()
    capped = served(tmp_path / "capped", {"max_adapt_steps": 5})
    assert len(capped.predict(None, frame, {"adapt_steps": 5})) == 4
    assert "adapt_steps: expected an integer from 0 to 5 (this model's maximum), got 6" in refused(capped, frame, {"adapt_steps": 6})
    unset = served(tmp_path / "unset", None, inner_steps=3)  # a version registered without one: 10 x the trained steps
    assert len(unset.predict(None, frame, {"adapt_steps": 30})) == 4
    assert "got 1000000" in refused(unset, frame, {"adapt_steps": 10**6})


@pytest.mark.parametrize(
    "column, row, value, named",
    [
        ("x", 3, np.nan, "x: row 3 holds a NaN or infinite value"),
        ("x", 7, -np.inf, "x: row 7 holds"),
        ("y", 2, np.inf, "y: row 2 holds an infinite value"),
    ],
)
def test_non_finite_inputs_are_a_400_naming_the_row(tmp_path, column, row, value, named):
    model, frame = served(tmp_path, None), sinusoid_request()
    frame.at[row, column] = [value] if column == "x" else value
    assert named in refused(model, frame)


def test_the_registered_maximum_travels_with_the_model(tracking, tmp_path):
    config = load("sinusoid", ["algorithm.inner_steps=2", "register.max_adapt_steps=4", "register.model_name=sine-capped"])
    with mlflow.start_run() as train_run:
        mlflow.log_artifacts(str(trained_folder(tmp_path / "trained")))
    with mlflow.start_run(run_name="register"):
        register_stage(config, Trained.download(train_run.info.run_id), {"eval_post_adapt_loss": 1.0})
    model = mlflow.pyfunc.load_model("models:/sine-capped@champion")
    frame = sinusoid_request()
    assert len(model.predict(frame, params={"adapt_steps": 4})) == 4
    with pytest.raises(MlflowException, match="from 0 to 4"):
        model.predict(frame, params={"adapt_steps": 5})
