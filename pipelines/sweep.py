"""``python -m pipelines sweep``: hyperparameter search on Ray Tune, every trial a tracked run of the train stage.

The driver (this process) checks the search space, prepares the data once, opens the sweep's MLflow run and hands
Tune the space. Each trial is the pipeline's train stage on one config, with its own workers inside the trial's
placement group (a bundle for the trial's driver, one per worker), so concurrent trials never take each other's
CPUs or GPUs. After every checkpoint a trial evaluates a fixed set of validation tasks (never the test split) and
reports that figure, with the checkpoint, to Tune, whose ASHA scheduler stops the trials that fall behind. The
driver opens each trial's MLflow child run before the trial starts and closes it with how the trial ended, and a
killed sweep continues from Tune's saved state (``--resume``) inside the same MLflow runs.
"""

import json
import math
import shlex
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mlflow
import ray
import yaml
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.driver import connect
from pipelines import tracking
from pipelines.build import prepared
from pipelines.compare import trials_table
from pipelines.config import Config, ConfigError, digest, dotted_keys, from_dict, load
from pipelines.pipeline import load_splits, run, search, tracked_run
from pipelines.selection import Metric
from pipelines.session import Session
from pipelines.space import Space, read_space, sweep_config
from pipelines.stages.train import Checkpoint, train


@dataclass(frozen=True)
class Sweep:
    """What the driver and every trial share (handed to trials through Tune, so plain data)."""

    run_id: str  # the sweep's MLflow run
    experiment_id: str
    tracking_uri: str  # absolute: trials run in working directories of their own
    config: Config  # what every trial starts from: the config with the space's fixed values
    storage: str  # Tune's storage; the experiment is its folder named run_id
    dataset: str | None  # the prepared dataset's folder; None for generated tasks
    trials: int  # how many trials it runs in all

    @property
    def path(self) -> str:
        """The Tune experiment's folder."""
        return str(Path(self.storage) / self.run_id)

    @property
    def metric(self) -> Metric:
        return Metric.validation(self.config)

    @property
    def trial_steps(self) -> int:
        return self.config.sweep.trial_steps or self.config.train.steps

    def trial_config(self, values: dict) -> Config:
        return self.config.with_values({**values, "train.steps": self.trial_steps})

    def splits(self) -> dict:
        """What a trial's workers hold: the training and validation splits, never the test split."""
        return {name: split for name, split in load_splits({"dataset": self.dataset}, self.config.data.delivery).items() if name != "test"}

    def trial_run(self, trial_id: str):
        """The MLflow child run of trial ``trial_id``, or None before the driver opened it."""
        runs = search(self.experiment_id, trial_id=trial_id, **{"mlflow.parentRunId": self.run_id})
        return runs[0] if runs else None


def run_trial(values: dict, sweep: Sweep) -> None:
    """One trial, in a Tune actor: the train stage on the trial's config, its workers in the trial's placement group.

    After each checkpoint the validation figures go to the trial's MLflow run (the train stage logs them) and, with
    the checkpoint, to Tune; a diverged trial's NaN as the worst figure, since ASHA ignores NaN and would never stop
    it. A restored trial continues from the checkpoint Tune hands back.
    """
    mlflow.set_tracking_uri(sweep.tracking_uri)
    config = sweep.trial_config(values)
    run_id = sweep.trial_run(tune.get_context().get_trial_id()).info.run_id
    splits = sweep.splits()
    MlflowClient().set_tag(run_id, "splits", ",".join(splits))
    placement = PlacementGroupSchedulingStrategy(ray.util.get_current_placement_group())
    with tempfile.TemporaryDirectory() as scratch, Session.from_config(config, splits, placement) as session:
        if tune.get_checkpoint() is not None:
            tune.get_checkpoint().to_directory(scratch)
        # keyed by the trial's config, wherever its checkpoint is unpacked
        checkpoint = Checkpoint(Path(scratch) / f"{run_id}.pt", digest(config.as_dict()))

        def report(done: int, metrics: dict[str, float]) -> None:
            ranked = {sweep.metric.name: sweep.metric.rankable(metrics[sweep.metric.name]), "step": done}
            tune.report(ranked, checkpoint=tune.Checkpoint.from_directory(scratch))

        train(session, run_id, checkpoint, report)


class TrialRuns(tune.Callback):
    """Each trial's MLflow child run under the sweep's run: opened by the driver before the trial starts (so a trial
    only ever logs into it), and closed with how the trial ended."""

    def __init__(self, sweep: Sweep):
        self.sweep = sweep

    def on_trial_start(self, iteration, trials, trial, **info):
        existing = self.sweep.trial_run(trial.trial_id)
        if existing is not None:  # a trial restored after an interruption
            MlflowClient().update_run(existing.info.run_id, "RUNNING")
            return
        config = self.sweep.trial_config(trial.config)
        tags = {
            **tracking.tags(config), "mlflow.parentRunId": self.sweep.run_id, "stage": "trial", "trial_id": trial.trial_id,
            "trial_values": json.dumps(trial.config),
        }  # fmt: skip
        client = MlflowClient()
        created = client.create_run(self.sweep.experiment_id, run_name=trial.trial_id, tags=tags)
        client.log_batch(created.info.run_id, params=[Param(k, str(v)) for k, v in dotted_keys(config.as_dict()).items()])

    def on_trial_complete(self, iteration, trials, trial, **info):
        stopped = trial.last_result.get("step", 0) < self.sweep.trial_steps
        self.close(trial, "stopped_early" if stopped else "completed", "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.close(trial, "failed", "FAILED")

    def close(self, trial, outcome: str, status: str) -> None:
        run_id = self.sweep.trial_run(trial.trial_id).info.run_id
        MlflowClient().set_tag(run_id, "trial_status", outcome)
        MlflowClient().set_terminated(run_id, status)


def trial_bundles(config: Config) -> list[dict[str, float]]:
    """A trial's placement group: one CPU for its driver, then a bundle per worker of what each worker asks for."""
    cluster = config.cluster
    worker = {"CPU": cluster.num_cpus, "GPU": cluster.num_gpus, **cluster.resources}
    return [{"CPU": 1}] + [{k: v for k, v in worker.items() if v}] * cluster.workers


def trials_that_fit(config: Config) -> int:
    """How many trials the cluster holds at once, counting each resource over its nodes."""
    need, have = Counter(), ray.cluster_resources()
    for bundle in trial_bundles(config):
        need.update(bundle)
    fits = min(int(have.get(name, 0) // amount) for name, amount in need.items())
    if fits < 1:
        raise ConfigError(
            f"the cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs, and one trial needs {dict(need)} "
            f"(a CPU for its driver, cluster.workers x the workers' own): use fewer or smaller workers, or pass --max-concurrent"
        )
    return fits


def trainable(sweep: Sweep):
    return tune.with_resources(tune.with_parameters(run_trial, sweep=sweep), tune.PlacementGroupFactory(trial_bundles(sweep.config)))


def new_tuner(sweep: Sweep, space: Space, trials: int, concurrent: int) -> tune.Tuner:
    """ASHA on the validation figure, reported at each checkpoint, over ``trials`` samples of the space."""
    every, steps = sweep.config.train.checkpoint_every, sweep.trial_steps
    asha = ASHAScheduler(time_attr="step", max_t=steps, grace_period=min(every, steps), reduction_factor=sweep.config.sweep.reduction_factor)
    return tune.Tuner(
        trainable(sweep),
        param_space=space.tune_space(),
        tune_config=tune.TuneConfig(
            metric=sweep.metric.name,
            mode=sweep.metric.mode,
            scheduler=asha,
            num_samples=trials,
            search_alg=BasicVariantGenerator(max_concurrent=concurrent, random_state=sweep.config.seed),
            reuse_actors=True,  # a trial's process (not its workers) serves the next trial: it skips importing torch and MLflow again
        ),  # fmt: skip
        run_config=tune.RunConfig(
            name=sweep.run_id,
            storage_path=sweep.storage,
            callbacks=[TrialRuns(sweep)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=1,  # the trials' status table; their figures and curves are in MLflow
        ),
    )


def absolute_uri(uri: str) -> str:
    """A relative SQLite store made absolute, so that trials in other working directories reach the same file."""
    prefix = "sqlite:///"
    return prefix + str(Path(uri.removeprefix(prefix)).resolve()) if uri.startswith(prefix) and not uri.startswith(prefix + "/") else uri


def prepared_dataset(config: Config) -> str | None:
    """The prepared dataset's folder (built once, here, for every trial), or None for generated tasks."""
    return None if config.dataset.generated else str(prepared(config).resolve())


def start(
    config_name: str, overrides: list[str], space_path: str, samples: int, max_concurrent: int | None, finish: bool, tracking_uri: str | None
) -> str:
    """Check everything, then sweep; returns the sweep's MLflow run id."""
    space = read_space(space_path)
    config = sweep_config(load(config_name, overrides), space)
    uri = absolute_uri(tracking.tracking_uri(tracking_uri))
    dataset = prepared_dataset(config)
    connect(config.cluster.address)
    concurrent = max_concurrent or trials_that_fit(config)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(config.experiment)
    storage = str(Path(config.train.checkpoint_dir).resolve() / "sweeps")
    metric = Metric.validation(config)
    tags = {
        **tracking.tags(config), "stage": "sweep", "sweep_metric": metric.name, "sweep_keys": ",".join(space.searched),
        "config_name": config_name, "tune_storage": storage, "sweep_mode": metric.mode,
    }  # fmt: skip
    with tracked_run(run_name=f"sweep-{tracking.run_name(config)}", tags=tags) as parent:
        sweep = Sweep(parent.info.run_id, experiment.experiment_id, uri, config, storage, dataset, space.trials(samples))
        fixed = {k: str(v) for k, v in dotted_keys(config.as_dict()).items() if k not in space.searched}
        mlflow.log_params({"samples": samples, "max_concurrent": concurrent, **fixed})
        mlflow.log_dict(config.as_dict(), "config.yaml")
        mlflow.log_text(Path(space_path).read_text(), "space.yaml")
        print(f"sweep run {sweep.run_id}: {sweep.trials} trial(s) over {', '.join(space.searched)}, up to {concurrent} at once")
        run_trials(sweep, new_tuner(sweep, space, samples, concurrent))
    return conclude(sweep, finish, tracking_uri)


def resume(run_id: str, finish: bool, tracking_uri: str | None) -> str:
    """Continue the sweep ``run_id`` from Tune's saved state: finished trials stay finished, the rest continue."""
    uri = absolute_uri(tracking.tracking_uri(tracking_uri))
    mlflow.set_tracking_uri(uri)
    parent = tracking.run_to_resume(run_id, "sweep", "--resume")
    config, params = from_dict(tracking.load_yaml_artifact(run_id, "config.yaml")), parent.data.params
    space = read_space(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="space.yaml"))
    trials = space.trials(int(params["samples"]))
    sweep = Sweep(run_id, parent.info.experiment_id, uri, config, parent.data.tags["tune_storage"], prepared_dataset(config), trials)
    if parent.info.status != "FINISHED":
        connect(config.cluster.address)
        print(f"continuing sweep run {run_id} from {sweep.path}")
        with tracked_run(run_id=run_id):
            if tune.Tuner.can_restore(sweep.path):
                tuner = tune.Tuner.restore(sweep.path, trainable(sweep), resume_errored=True)
            else:  # killed before Tune first saved its state: nothing ran that counts
                tuner = new_tuner(sweep, space, int(params["samples"]), int(params["max_concurrent"]))
            run_trials(sweep, tuner)
    return conclude(sweep, finish, tracking_uri)


def run_trials(sweep: Sweep, tuner: tune.Tuner) -> None:
    """Run the trials, then record the best in the sweep's (active) run. Trial runs left open by an interruption
    are closed as KILLED, and an interrupted sweep (Tune returns from Ctrl-C once it saved its state, as if done)
    raises KeyboardInterrupt: it ended fewer trials than it has."""
    try:
        tuner.fit()
    finally:
        runs = search(sweep.experiment_id, **{"mlflow.parentRunId": sweep.run_id})
        for trial in runs:
            if trial.info.status == "RUNNING":
                MlflowClient().set_terminated(trial.info.run_id, "KILLED")
    if sum(trial.info.status in ("FINISHED", "FAILED") for trial in runs) < sweep.trials:
        raise KeyboardInterrupt
    best = best_trial(sweep)
    if best is not None:
        mlflow.log_dict(best_config(sweep, best).as_dict(), "best_config.yaml")
        mlflow.log_metric(f"best_{sweep.metric.name}", best.data.metrics[sweep.metric.name])
        mlflow.set_tag("best_trial_run_id", best.info.run_id)


def best_trial(sweep: Sweep):
    """The trial run with the best last validation figure (the first of ``trials_table``), or None if none has a
    finite one."""
    table = trials_table(mlflow.get_run(sweep.run_id))
    return mlflow.get_run(table.run_id.iloc[0]) if len(table) and math.isfinite(table[sweep.metric.name].iloc[0]) else None


def best_config(sweep: Sweep, best) -> Config:
    """The best trial's values on the sweep's config, for the full ``train.steps``."""
    return sweep.config.with_values(json.loads(best.data.tags["trial_values"]))


def run_command(config_name: str, config: Config) -> str:
    """``python -m pipelines run CONFIG --set ...`` for ``config``: a ``--set`` for every key where it differs from CONFIG."""
    named, wanted = dotted_keys(load(config_name).as_dict()), dotted_keys(config.as_dict())
    sets = [f"{k}={yaml_value(v)}" for k, v in wanted.items() if v != named.get(k) and not k.startswith("sweep.")]
    return shlex.join(["python", "-m", "pipelines", "run", config_name, *(arg for s in sets for arg in ("--set", s))])


def yaml_value(value) -> str:
    """``value`` as ``--set`` reads it back (YAML): ``1.0e-05`` rather than ``1e-05``, which YAML takes for a string."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("...\n").strip()


def conclude(sweep: Sweep, finish: bool, tracking_uri: str | None) -> str:
    """Print the trials, best first, and the best config as a ``run`` command; with ``finish``, run it through the
    whole pipeline (full training, test evaluation, register). Returns the sweep's run id."""
    parent = mlflow.get_run(sweep.run_id)
    table = trials_table(parent)
    print(table.drop(columns="run_id").to_string(index=False))
    best = best_trial(sweep)
    if best is None:
        raise ConfigError(f"sweep {sweep.run_id}: no trial reported a finite {sweep.metric.name}; nothing to choose")
    config = best_config(sweep, best)
    print(f"best: {sweep.metric.name} = {best.data.metrics[sweep.metric.name]:.4f} (trial {best.data.tags['trial_id']}, run {best.info.run_id})")
    print(f"run it: {run_command(parent.data.tags['config_name'], config)}")
    if finish:
        finished = run(config, tracking_uri)
        MlflowClient().set_tag(finished, "sweep_run_id", sweep.run_id)
        MlflowClient().set_tag(sweep.run_id, "finish_run_id", finished)
    return sweep.run_id
