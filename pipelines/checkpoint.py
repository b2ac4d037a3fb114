"""Training checkpoints: written atomically, read back with ``weights_only=True``, and where they are recorded in the train
run (tag ``checkpoint``, an absolute path), so that a resume from anywhere finds them, or says that it cannot."""

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipelines.config import ConfigError

TAG = "checkpoint"


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


def of_run(run: Run, checkpoint_dir: str, restart: bool = False) -> Checkpoint:
    """The checkpoint of train run ``run``: where the run recorded it, else ``checkpoint_dir/<run id>.pt`` made absolute.

    A recorded checkpoint that is not there (written on another machine, or deleted) stops the run, since training
    again from step 0 would silently discard what was done, unless ``restart`` asks for exactly that.
    """
    run_id, recorded = run.info.run_id, run.data.tags.get(TAG)
    fresh = Checkpoint((Path(checkpoint_dir) / f"{run_id}.pt").resolve(), run.data.tags["stage_key"], run_id)
    if recorded is None:
        return fresh
    if Path(recorded).exists():
        return Checkpoint(Path(recorded), fresh.stage_key, run_id)
    if not restart:
        pipeline = run.data.tags.get("mlflow.parentRunId", "PIPELINE_RUN_ID")
        raise ConfigError(
            f"train run {run_id}: its checkpoint {recorded} is not here (written on another machine, or deleted); "
            f"make it available at that path, or train again from step 0 with: python -m pipelines resume {pipeline} --restart"
        )
    print(f"train: checkpoint {recorded} not found; training again from step 0 (--restart)")
    return fresh
