"""MLflow: where runs go, what they are called, and cheap per-step metric logging."""

import os
import subprocess
import time
from pathlib import Path

import mlflow
import yaml
from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from pipelines.config import Config, ConfigError, digest, dotted_keys

DEFAULT_URI = "sqlite:///mlflow.db"


def tracking_uri(cli_uri: str | None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite file in the working directory; one whose scheme
    MLflow has no store for is refused here, before anything runs."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    try:
        _tracking_store_registry.get_store_builder(uri)
    except mlflow.exceptions.MlflowException:
        given = "--tracking-uri" if cli_uri else "MLFLOW_TRACKING_URI"
        raise ConfigError(f"{given} {uri}: not a tracking store (expected sqlite:///FILE.db, a folder, or http(s)://SERVER)") from None
    return uri


def code_version() -> str:
    """The git commit of this checkout, or 'unknown' outside one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def classifies(config: Config) -> bool:
    return config.dataset.kind == "classification"


def task_name(config: Config) -> str:
    """``omniglot-5w1s``, or ``sinusoid-10shot`` where there are no ways: what every algorithm on this task shares."""
    task = config.task
    shape = f"{task.ways}w{task.shots}s" if classifies(config) else f"{task.shots}shot"
    return f"{config.data.name}-{shape}"


def run_name(config: Config) -> str:
    """``maml-omniglot-5w1s``, or ``maml-sinusoid-10shot`` for regression."""
    return config.run_name or f"{config.algorithm.name}-{task_name(config)}"


def tags(config: Config) -> dict[str, str]:
    """What people filter and group by in the MLflow UI."""
    return {
        "algorithm": config.algorithm.name,
        "dataset": config.data.name,
        "ways": str(config.task.ways) if classifies(config) else "-",
        "shots": str(config.task.shots),
        "workers": str(config.cluster.workers),
        "config_digest": digest(config.as_dict()),
        "code_version": code_version(),
    }


def log_config(config: Config) -> None:
    """The flattened config as params (dotted keys) and the whole config as an artifact."""
    mlflow.log_params({k: str(v) for k, v in dotted_keys(config.as_dict()).items()})
    mlflow.log_dict(config.as_dict(), "config.yaml")


def log_published(config: Config) -> None:
    """The paper's figure for this config, where set, in the active run: metrics ``published_acc`` (and
    ``published_acc_ci95``), tags ``published_source`` and its protocol, ``published_steps`` and ``published_tasks``,
    to read beside ``eval_steps<published_steps>_acc``."""
    published = config.published
    if published.acc is None:
        return
    mlflow.log_metrics({"published_acc": published.acc} | ({"published_acc_ci95": published.ci95} if published.ci95 is not None else {}))
    protocol = {"published_steps": str(published.steps)} | ({"published_tasks": str(published.tasks)} if published.tasks is not None else {})
    mlflow.set_tags({"published_source": published.source, **protocol})


def run_to_resume(run_id: str, stage: str, command: str) -> Run:
    """The run ``run_id`` of the store in use, which ``command`` continues: it must be a ``stage`` run."""
    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ConfigError(f"{command} {run_id}: no such run in {mlflow.get_tracking_uri()}") from None
    if run.data.tags.get("stage") != stage:
        raise ConfigError(f"{command} {run_id}: not a {stage} run (it is a '{run.data.tags.get('stage')}' run)")
    return run


def load_yaml_artifact(run_id: str, path: str):
    """A YAML artifact of a run (its config), read with ``yaml.safe_load``."""
    return yaml.safe_load(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)).read_text())


class MetricBuffer:
    """Collects per-step metrics and writes them in one batch per ``flush`` (at each checkpoint).

    Steps up to ``logged_until`` are already in the run and are not written again.
    """

    def __init__(self, run_id: str, logged_until: int = -1):
        self.client, self.run_id, self.logged_until = MlflowClient(), run_id, logged_until
        self.rows: list[Metric] = []

    @staticmethod
    def last_step(run_id: str, metric: str) -> int:
        """The highest step of ``metric`` logged in the run, -1 if none."""
        return max((m.step for m in MlflowClient().get_metric_history(run_id, metric)), default=-1)

    def add(self, metrics: dict[str, float], step: int) -> None:
        if step <= self.logged_until:
            return
        now = int(time.time() * 1000)
        self.rows += [Metric(k, float(v), now, step) for k, v in metrics.items()]

    def flush(self) -> None:
        for start in range(0, len(self.rows), 1000):  # MLflow's per-batch limit
            self.client.log_batch(self.run_id, metrics=self.rows[start : start + 1000])
        self.rows = []
