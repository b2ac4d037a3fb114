"""Distributed meta-training: the outer loop, checkpointed so a killed run resumes exactly, and validated at each
checkpoint where the best validated parameters are the trained model (``train.select_on: val``) or a sweep ranks trials.

Checkpoints are written atomically, read back with ``weights_only=True``, and recorded in the train run (tag
``checkpoint``, an absolute path), so that a resume from anywhere finds them, or says that it cannot."""

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from tqdm import tqdm

from pipelines.config import ConfigError
from pipelines.selection import Metric
from pipelines.session import Session
from pipelines.stages.evaluate import evaluate
from pipelines.tracking import MetricBuffer


class Diverged(ConfigError):
    """The training loss is not finite: rates too large for the model (or data with non-finite values)."""


TAG = "checkpoint"  # the train run's tag that records where its checkpoint is


@dataclass(frozen=True)
class State:
    """Everything needed to continue after ``step`` steps as an uninterrupted run would: the parameters, the outer
    optimizer's state, and the selection on validation so far (``Selection.state``; None when nothing selects)."""

    flat: torch.Tensor
    optimizer: dict
    step: int
    selection: dict | None = None


@dataclass(frozen=True)
class Checkpoint:
    """The one checkpoint of a train run, at ``path``; it belongs to the train stage ``stage_key``. With ``run_id``,
    the first save records ``path`` in that run."""

    path: Path
    stage_key: str
    run_id: str | None = None

    def save(self, state: State) -> None:
        """A crash mid-write leaves the previous checkpoint intact."""
        first = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({**vars(state), "flat": state.flat.detach().clone(), "stage_key": self.stage_key}, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        if first and self.run_id is not None:
            MlflowClient().set_tag(self.run_id, TAG, str(self.path))

    def load(self) -> State | None:
        """The checkpoint, or None if there is none; refuses one written for another train stage."""
        if not self.path.exists():
            return None
        saved = torch.load(self.path, weights_only=True)
        key = saved.pop("stage_key")
        if key != self.stage_key:
            raise ValueError(f"{self.path}: checkpoint belongs to train stage {key}, not {self.stage_key}")
        return State(**saved)

    @classmethod
    def of_run(cls, run: Run, checkpoint_dir: str, restart: bool = False) -> "Checkpoint":
        """The checkpoint of train run ``run``: where the run recorded it, else ``checkpoint_dir/<run id>.pt`` made absolute.

        A recorded checkpoint that is not there (written on another machine, or deleted) stops the run, since training
        again from step 0 would silently discard what was done, unless ``restart`` asks for exactly that.
        """
        run_id, recorded = run.info.run_id, run.data.tags.get(TAG)
        fresh = cls((Path(checkpoint_dir) / f"{run_id}.pt").resolve(), run.data.tags["stage_key"], run_id)
        if recorded is None:
            return fresh
        if Path(recorded).exists():
            return cls(Path(recorded), fresh.stage_key, run_id)
        if not restart:
            pipeline = run.data.tags.get("mlflow.parentRunId", "PIPELINE_RUN_ID")
            raise ConfigError(
                f"train run {run_id}: its checkpoint {recorded} is not here (written on another machine, or deleted); "
                f"make it available at that path, or train again from step 0 with: python -m pipelines resume {pipeline} --restart"
            )
        print(f"train: checkpoint {recorded} not found; training again from step 0 (--restart)")
        return fresh


@dataclass(frozen=True)
class Best:
    flat: torch.Tensor
    step: int
    value: float


class Selection:
    """Selecting on validation: the best validated parameters so far, and how many validations since did not improve
    on them (``patience`` of them in a row stop training)."""

    def __init__(self, metric: Metric, patience: int | None, best: Best | None = None, stale: int = 0):
        self.metric, self.patience, self.best, self.stale = metric, patience, best, stale

    def observe(self, value: float, flat: torch.Tensor, step: int) -> None:
        """The first validation is the best so far whatever its figure; a later one replaces it if it improves on it."""
        if self.best is None or self.metric.improves(value, self.best.value):
            self.best, self.stale = Best(flat.detach().clone(), step, value), 0
        else:
            self.stale += 1

    @property
    def out_of_patience(self) -> bool:
        return self.patience is not None and self.best is not None and self.stale >= self.patience

    def state(self) -> dict | None:
        """For the checkpoint: tensors and numbers only."""
        return None if self.best is None else {**vars(self.best), "stale": self.stale}

    def restore(self, state: dict | None) -> None:
        if state is not None:
            self.best, self.stale = Best(state["flat"], state["step"], state["value"]), state["stale"]


class Training:
    """One train run's outer loop on a session: calls of ``cluster.steps_per_call`` steps, each ending by the next
    checkpoint; at each checkpoint (and the last step) a validation where one is wanted, the metrics, the checkpoint."""

    def __init__(self, session: Session, run_id: str, checkpoint: Checkpoint, at_validation: Callable[[int, dict[str, float]], None] | None):
        config = session.config
        self.session, self.checkpoint, self.at_validation, self.train = session, checkpoint, at_validation, config.train
        self.metric = Metric.validation(config)
        self.selection = Selection(self.metric, self.train.patience) if self.train.select_on == "val" else None
        self.validates = self.selection is not None or at_validation is not None
        self.done, self.rates, self.validating = 0, [], False
        self.losses = MetricBuffer(run_id, logged_until=MetricBuffer.last_step(run_id, "meta_loss"))
        self.validations = MetricBuffer(run_id, logged_until=MetricBuffer.last_step(run_id, self.metric.name))

    def resume(self) -> None:
        """Continue from the checkpoint, where there is one: parameters, optimizer and selection as they were."""
        state = self.checkpoint.load()
        if state is None:
            return
        self.session.load(state.flat)
        self.session.optimizer.load_state_dict(state.optimizer)
        self.done = state.step
        if self.selection is not None:
            self.selection.restore(state.selection)

    def call(self, count: int) -> dict[str, float]:
        """``count`` steps, logged; the last one's metrics. A non-finite loss stops training (its steps logged)."""
        started = time.perf_counter()
        per_step = self.session.steps(self.done, count)
        step_s = (time.perf_counter() - started) / count
        for step, metrics in enumerate(per_step, start=self.done):
            metrics.update(step_s=step_s, tasks_per_s=self.train.meta_batch / step_s)
            if "env_steps" in metrics:  # a meta-RL step: its environment steps over the whole meta-batch, and their rate
                metrics["env_steps"] *= self.train.meta_batch
                metrics["env_steps_per_s"] = metrics["env_steps"] / step_s
            self.rates.append(metrics["tasks_per_s"])
            self.losses.add(metrics, step)
            if not math.isfinite(metrics["meta_loss"]):
                self.losses.flush()
                raise Diverged(
                    f"train: meta_loss is {metrics['meta_loss']} at step {step}: training diverged; "
                    f"try a lower train.outer_lr or algorithm.inner_lr (or check the data for non-finite values)"
                )
        self.done += count
        return metrics

    def validate(self) -> dict[str, float]:
        """The validation figures at this step, logged there; the selection sees them."""
        self.validating = True
        metrics, _ = evaluate(self.session, "val")
        self.validating = False
        self.validations.add(metrics, self.done)
        if self.selection is not None:
            self.selection.observe(metrics[self.metric.name], self.session.flat, self.done)
        return metrics

    def save(self) -> None:
        """Metrics first, then the checkpoint: a crash between the two leaves metrics ahead, which a resumed run does
        not log again."""
        self.losses.flush()
        self.validations.flush()
        selection = self.selection.state() if self.selection is not None else None
        self.checkpoint.save(State(self.session.flat, self.session.optimizer.state_dict(), self.done, selection))

    def run(self) -> dict[str, float]:
        cfg = self.train
        bar = tqdm(total=cfg.steps, initial=self.done, desc="train", unit="step", mininterval=1.0)
        try:
            while self.done < cfg.steps and not (self.selection is not None and self.selection.out_of_patience):
                count = min(
                    self.session.config.cluster.steps_per_call, cfg.steps - self.done, cfg.checkpoint_every - self.done % cfg.checkpoint_every
                )
                metrics = self.call(count)
                bar.update(count)
                bar.set_postfix(loss=f"{metrics['meta_loss']:.4f}", tasks_per_s=f"{metrics['tasks_per_s']:.0f}", refresh=False)
                if self.done % cfg.checkpoint_every == 0 or self.done == cfg.steps:
                    validated = self.validate() if self.validates else {}
                    self.save()
                    if self.at_validation is not None:
                        self.at_validation(self.done, validated)
        except Diverged:
            raise  # the last checkpoint stands: these parameters are not finite
        except BaseException:  # also Ctrl-C: keep what was done, unless stopped mid-validation (resumed, it validates again)
            if not self.validating:
                self.save()
            raise
        finally:
            bar.close()
        return self.summary()

    def summary(self) -> dict[str, float]:
        """The median speed; selecting on validation, ``flat`` set to the best validated parameters, and where they were."""
        summary = {"train_tasks_per_s": float(np.median(self.rates))} if self.rates else {}
        if self.selection is not None:
            best = self.selection.best
            self.session.load(best.flat)
            summary.update({"best_step": best.step, f"best_{self.metric.name}": best.value})
            if self.done < self.train.steps:
                summary["stopped_at"] = self.done
                print(f"train: stopped at step {self.done}, {self.train.patience} validations without improvement; the best was at step {best.step}")
        return summary


def train(
    session: Session, run_id: str, checkpoint: Checkpoint, at_validation: Callable[[int, dict[str, float]], None] | None = None
) -> dict[str, float]:
    """Meta-train ``session.flat`` in place up to ``train.steps``, from ``checkpoint`` if there is one; summary metrics.

    Per-step metrics are written to MLflow just before each checkpoint; the resumed run recomputes steps logged ahead
    of its checkpoint (identically) without logging them again, so every step is logged exactly once.

    With ``train.select_on: val``, or an ``at_validation``, each checkpoint and the last step first validate on the
    ``eval.val_tasks`` fixed validation tasks and log their ``val_*`` metrics at that step; ``at_validation(steps done,
    metrics)`` runs after the checkpoint (a sweep's trial reports there). Selecting on validation, ``flat`` ends as the
    best validated parameters, and ``train.patience`` validations in a row without improvement stop training. The
    checkpoint keeps the selection so far, so a resumed run selects as an uninterrupted one.
    """
    training = Training(session, run_id, checkpoint, at_validation)
    training.resume()
    return training.run()
