"""A trained learner as two artifacts: ``params.pt`` (tensors only) and ``config.yaml``.

Loading never unpickles arbitrary objects: ``torch.load(weights_only=True)`` for
the tensors, ``yaml.safe_load`` for the config, and the code rebuilds the rest.
"""

import tempfile
from pathlib import Path

import mlflow
import torch
import yaml

from meta_core.algorithms import Algorithm
from meta_core.models import Params
from pipelines.build import build_learner
from pipelines.config import Config, from_dict


def log_trained(config: Config, params: Params) -> None:
    """Log the meta-learned parameters and the config that built them to the active run."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({k: v.detach().contiguous() for k, v in params.items()}, Path(tmp) / "params.pt")
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(config.as_dict(), sort_keys=False))
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
