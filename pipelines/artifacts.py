"""A trained learner as two artifacts: ``params.pt`` (tensors only) and ``config.yaml``.

Loading never unpickles arbitrary objects: ``torch.load(weights_only=True)`` for
the tensors, ``yaml.safe_load`` for the config, and the code rebuilds the rest.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
import yaml

from meta_core.algorithms import Algorithm
from meta_core.models import Params
from pipelines.build import build_learner
from pipelines.config import Config, from_dict


@dataclass(frozen=True)
class Trained:
    """A train run's outcome, handed from stage to stage in one pipeline run: the run, its config and parameters."""

    run_id: str
    config: Config
    params: Params

    @classmethod
    def download(cls, run_id: str) -> "Trained":
        """From the train run's artifacts: training done by an earlier process."""
        config, _, params = load_trained(run_id)
        return cls(run_id, config, params)

    def write(self, folder: str | Path) -> None:
        """The two artifacts, into ``folder``."""
        torch.save({k: v.detach().contiguous() for k, v in self.params.items()}, Path(folder) / "params.pt")
        (Path(folder) / "config.yaml").write_text(yaml.safe_dump(self.config.as_dict(), sort_keys=False))

    def log(self) -> None:
        """Both artifacts, to the active run."""
        with tempfile.TemporaryDirectory() as tmp:
            self.write(tmp)
            mlflow.log_artifacts(tmp)


def read_trained(folder: str | Path) -> tuple[Config, Algorithm, Params]:
    """Config, algorithm (with its model) and parameters from a folder holding both artifacts."""
    folder = Path(folder)
    config = from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
    params = torch.load(folder / "params.pt", weights_only=True, map_location="cpu")
    return config, build_learner(config), params


def load_trained(run_id: str) -> tuple[Config, Algorithm, Params]:
    """The same, from an MLflow run that logged them (a train stage run)."""
    with tempfile.TemporaryDirectory() as tmp:  # read_trained keeps nothing on disk
        return read_trained(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="", dst_path=tmp))
