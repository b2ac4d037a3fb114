"""Test isolation: a private HOME (Ray's auth token, MLflow), no usage stats, one local Ray per session."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_home = tempfile.mkdtemp(prefix="meta-tests-home-")
os.environ.update(HOME=_home, RAY_USAGE_STATS_ENABLED="0")  # a local ray.init() writes its token to $HOME/.ray
for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI"):
    os.environ.pop(name, None)

ROOT = Path(__file__).resolve().parents[1]


def start_local_ray(ray) -> None:
    """This session's own local Ray (never another one running on the machine), unless it is up already."""
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)


@pytest.fixture(scope="session")
def omniglot(tmp_path_factory):
    """Two Omniglot zips (``tests/omniglot_data.py``): the real small sets where OMNIGLOT_DIR names them, else generated."""
    from tests.omniglot_data import omniglot_zips

    return omniglot_zips(tmp_path_factory.mktemp("omniglot"))


@pytest.fixture(scope="session")
def ray_session():
    import ray

    yield ray
    ray.shutdown()


@pytest.fixture
def ray_local(ray_session):
    """The session's local Ray; started again if a multi-node test shut it down for its own cluster."""
    start_local_ray(ray_session)
    return ray_session


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made: creating them takes seconds, copying the file does not.

    Made in its own folder: the store fixes its default experiment's artifact folder under the working directory.
    """
    from mlflow.tracking import MlflowClient

    folder, cwd = tmp_path_factory.mktemp("store"), os.getcwd()
    os.chdir(folder)
    try:
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    finally:
        os.chdir(cwd)
    return folder / "mlflow.db"


@pytest.fixture
def tracking(empty_store, tmp_path, monkeypatch):
    """A fresh SQLite MLflow store; artifacts land under tmp_path too (the working directory)."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("tests")  # forget the experiment an earlier test made active in another store
    return uri
