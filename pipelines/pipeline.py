"""The pipeline: prepare -> train -> evaluate -> register, one MLflow parent run, one child run per stage.

Each stage declares the config sections it reads and the stages whose outputs
it uses; its key is a digest of both. A stage whose key matches a finished run
of that stage in the experiment is skipped and its recorded outputs reused. A
pipeline that died (crash, Ctrl-C, SIGKILL) is picked up again by ``resume``,
or by the same ``run`` command: the same parent run, the same stage runs, and
training continues from its last checkpoint, at the absolute path its train run
recorded (a resume that cannot find it stops, unless asked to restart). Within
one run, stages hand the trained learner on in memory.
"""

import contextlib
import json
import operator
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Callable

import mlflow
from mlflow.entities import Run

from cluster.driver import connect
from meta_core.models import flatten
from pipelines import lease, tracking
from pipelines.artifacts import Trained
from pipelines.build import check_placeable
from pipelines.config import Config, digest, from_dict
from pipelines.plots import log_plots
from pipelines.session import Session
from pipelines.stages.evaluate import evaluate
from pipelines.stages.register import register_stage
from pipelines.stages.train import Checkpoint, train


def load_splits(prepared: dict, delivery: str = "auto") -> dict:
    """Where the workers read the splits they draw tasks from (``data.delivery``: ``cluster.worker.deliver``), or nothing for
    tasks drawn from a formula (where each split is a stream of its own). The driver reads none of them."""
    if prepared["dataset"] is None:
        return {"train": None, "val": None, "test": None}
    import data
    from cluster.worker import deliver

    return deliver(data.split_arrays(Path(prepared["dataset"])), delivery)


class Context:
    """What stages share within one pipeline run: the config, upstream outputs, one training session (its workers
    started once, for training and evaluation), and the trained learner, handed on in memory."""

    def __init__(self, config: Config, restart: bool = False):
        self.config, self.restart, self.outputs = config, restart, {}
        self._session: Session | None = None
        self.learned: Trained | None = None  # set by the train stage where it ran in this process

    def session(self) -> Session:
        if self._session is None:
            connect(self.config.cluster.address)
            check_placeable(self.config.cluster)
            self._session = Session.from_config(self.config, load_splits(self.outputs["prepare"], self.config.data.delivery))
        return self._session

    def trained(self) -> Trained:
        """What the train stage produced: in memory, or from its run where training was done by an earlier process."""
        if self.learned is None:
            self.learned = Trained.download(self.outputs["train"]["run_id"])
        return self.learned

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


def prepare_body(ctx: Context, run) -> dict:
    if ctx.config.dataset.generated:
        return {"dataset": None}
    from pipelines.stages.prepare import prepare_stage as prepare

    return prepare(ctx.config)


def train_body(ctx: Context, run) -> dict:
    session = ctx.session()
    summary = train(session, run.info.run_id, Checkpoint.of_run(run, ctx.config.train.checkpoint_dir, ctx.restart))
    ctx.learned = Trained(run.info.run_id, ctx.config, session.params())
    ctx.learned.log()
    return {"run_id": run.info.run_id, "summary": summary}


def evaluate_body(ctx: Context, run) -> dict:
    trained, session = ctx.trained(), ctx.session()
    session.load(flatten(trained.params))
    metrics, table = evaluate(session)
    mlflow.log_table(table, "evaluation.json")
    tracking.log_published(ctx.config)
    log_plots(trained.run_id, table)
    return {"run_id": run.info.run_id, "summary": metrics}


def register_body(ctx: Context, run) -> dict:
    return register_stage(ctx.config, ctx.trained(), ctx.outputs["evaluate"]["summary"])


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]  # config sections (or dotted keys) whose values define the stage's inputs
    after: tuple[str, ...]  # stages whose outputs it uses
    body: Callable[[Context, Run], dict]  # returns the stage's outputs (JSON); "summary" metrics go to the parent too
    still_valid: Callable[[dict], bool] = lambda outputs: True  # can recorded outputs still be used?
    reads_when: Callable[[Config], tuple[str, ...]] = lambda config: ()  # what it reads under some configs only


def validation_reads(config: Config) -> tuple[str, ...]:
    """Selecting on validation also reads how many tasks it validates on and the figure it ranks (register.metric's twin)."""
    return ("eval.val_tasks", "register.metric") if config.train.select_on == "val" else ()


STAGES = [
    Stage("prepare", ("seed", "data", "task"), (), prepare_body, lambda out: out["dataset"] is None or Path(out["dataset"]).is_dir()),
    Stage("train", ("seed", "task", "model", "algorithm", "train", "cluster"), ("prepare",), train_body, reads_when=validation_reads),
    Stage("evaluate", ("seed", "task", "eval.tasks", "eval.steps"), ("prepare", "train"), evaluate_body),
    Stage("register", ("register",), ("train", "evaluate"), register_body),
]
STAGE_NAMES = [s.name for s in STAGES]


def stage_key(stage: Stage, config: Config, outputs: dict) -> str:
    sections = config.as_dict()
    inputs = {k: reduce(operator.getitem, k.split("."), sections) for k in (*stage.reads, *stage.reads_when(config))}
    inputs["upstream"] = {name: outputs[name] for name in stage.after}
    return digest(inputs)


@contextlib.contextmanager
def tracked_run(**kwargs):
    """An MLflow run that ends FINISHED, KILLED on Ctrl-C, or FAILED on any other error."""
    run = mlflow.start_run(**kwargs)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def search(experiment_id: str, **tags) -> list[Run]:
    """Runs of the experiment carrying all ``tags``, newest first."""
    where = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    return mlflow.search_runs([experiment_id], where, order_by=["attributes.start_time DESC"], output_format="list")


def run_stage(stage: Stage, ctx: Context, parent: Run, force: bool) -> None:
    """Reuse a finished run of this stage with the same key, reopen this pipeline's unfinished one, or start one."""
    key = stage_key(stage, ctx.config, ctx.outputs)
    experiment_id = parent.info.experiment_id
    finished = [] if force else [r for r in search(experiment_id, stage=stage.name, stage_key=key) if r.info.status == "FINISHED"]
    done = [r for r in finished if stage.still_valid(json.loads(r.data.tags["stage_outputs"]))]
    if done:
        ctx.outputs[stage.name] = json.loads(done[0].data.tags["stage_outputs"])
        print(f"{stage.name}: unchanged, reusing run {done[0].info.run_id}")
    else:
        mine = search(experiment_id, stage=stage.name, stage_key=key, **{"mlflow.parentRunId": parent.info.run_id})
        unfinished = [r for r in mine if r.info.status != "FINISHED"]
        reopen = {"run_id": unfinished[0].info.run_id} if unfinished and not force else {"run_name": stage.name}
        tags = {"stage": stage.name, "stage_key": key, "config_digest": digest(ctx.config.as_dict()), "code_version": tracking.code_version()}
        with tracked_run(nested=True, tags=tags, **reopen) as run:
            outputs = stage.body(ctx, mlflow.get_run(run.info.run_id))
            mlflow.log_metrics(outputs.get("summary", {}))
            mlflow.set_tag("stage_outputs", json.dumps(outputs))
        ctx.outputs[stage.name] = outputs
    mlflow.set_tag(f"{stage.name}_run_id", ctx.outputs[stage.name].get("run_id") or "")
    mlflow.log_metrics(ctx.outputs[stage.name].get("summary", {}))


def find_pipeline(experiment_id: str, config: Config) -> Run | None:
    runs = search(experiment_id, stage="pipeline", config_digest=digest(config.as_dict()))
    return runs[0] if runs else None


def run(config: Config, tracking_uri: str | None = None, force: tuple[str, ...] = (), resume_id: str | None = None, restart: bool = False) -> str:
    """Run (or continue) the pipeline for ``config``; returns its MLflow parent run id. ``restart``: an unfinished
    train run whose checkpoint is gone trains again from step 0 (without it, that stops the run)."""
    mlflow.set_tracking_uri(tracking.tracking_uri(tracking_uri))
    if resume_id:  # in the run's own experiment, even if it was renamed since
        previous = mlflow.get_run(resume_id)
        experiment = mlflow.set_experiment(experiment_id=previous.info.experiment_id)
    else:
        experiment = mlflow.set_experiment(config.experiment)
        previous = find_pipeline(experiment.experiment_id, config)
    if previous is not None and previous.info.status == "FINISHED" and not force:
        print(f"pipeline run {previous.info.run_id} already finished with this config (use --force STAGE to redo one)")
        return previous.info.run_id
    if previous is not None and previous.info.status != "FINISHED":
        lease.refuse_if_held(previous)
        print(f"continuing pipeline run {previous.info.run_id}")
        start = {"run_id": previous.info.run_id}
    else:
        start = {"run_name": tracking.run_name(config), "tags": {**tracking.tags(config), "stage": "pipeline", **lease.tags()}}
    ctx = Context(config, restart)
    try:
        with tracked_run(**start, log_system_metrics=True) as parent, lease.held(parent.info.run_id):
            if "run_id" not in start:
                tracking.log_config(config)
                tracking.log_published(config)
            for stage in STAGES:
                run_stage(stage, ctx, parent, stage.name in force)
    finally:
        ctx.close()
    summary = ctx.outputs["evaluate"]["summary"]
    print(report(summary))
    print(f"MLflow UI: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()} --host 127.0.0.1 --port 5000")
    print(f"  then open http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs")
    return parent.info.run_id


def resume(run_id: str, tracking_uri: str | None = None, restart: bool = False) -> str:
    """Continue the pipeline run ``run_id`` with the config it was started with, training from the checkpoint its train
    run recorded; with ``restart``, from step 0 where that checkpoint is gone."""
    mlflow.set_tracking_uri(tracking.tracking_uri(tracking_uri))
    tracking.run_to_resume(run_id, "pipeline", "resume")
    return run(from_dict(tracking.load_yaml_artifact(run_id, "config.yaml")), tracking_uri, resume_id=run_id, restart=restart)


def report(metrics: dict[str, float]) -> str:
    lines = ["evaluation (mean +- 95% interval):"]
    for name in ("pre_adapt", "post_adapt"):
        for metric in ("loss", "acc", "return"):
            key = f"eval_{name}_{metric}"
            if key in metrics:
                lines.append(f"  {name:<10} {metric}: {metrics[key]:.4f} +- {metrics[key + '_ci95']:.4f}")
    if "eval_adaptation_delta" in metrics:
        lines.append(f"  adaptation_delta (return): {metrics['eval_adaptation_delta']:.4f} +- {metrics['eval_adaptation_delta_ci95']:.4f}")
    return "\n".join(lines)
