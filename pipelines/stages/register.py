"""Log the trained learner as a servable few-shot model, register it, and crown it if it beats the champion."""

import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from pipelines import serving, tracking
from pipelines.artifacts import Trained
from pipelines.config import Config
from pipelines.selection import Metric

ROOT = Path(__file__).resolve().parents[2]
# What the served model imports (the specs, and the config that names them); packed with it so `mlflow models serve`
# needs no checkout.
PACKAGES = ("meta_core", "data", "cluster", "pipelines")
REQUIREMENTS = [f"{name}=={version(name)}" for name in ("mlflow", "torch", "numpy", "pandas", "PyYAML", "pyarrow", "pillow")]


def input_example(config: Config, kind: str) -> pd.DataFrame:
    """A task of the trained shape with random inputs: shows the request format and checks the model answers it."""
    task, rng = config.task, np.random.default_rng(config.seed)
    shape = serving.input_shape(config)
    if kind == "rl":  # one episode of transitions (observation and action, reward) and two observations
        step = (*shape[:-1], shape[-1] + config.dataset.outputs(task))
        return serving.request(rng.random((task.horizon, *step)), rng.uniform(-1.0, 0.0, task.horizon), rng.random((2, *shape)))
    if kind == "classification":
        labels, queries = np.repeat(np.arange(task.ways), task.shots), task.ways
    else:
        labels, queries = rng.uniform(-1.0, 1.0, task.shots), 2
    return serving.request(rng.random((len(labels), *shape)), labels, rng.random((queries, *shape)))


def code_paths(folder: Path) -> list[str]:
    """Copies of the packages the served model imports, without the prepared data sets and downloads that
    ``data/cache`` may hold (gigabytes for the ImageNet sets)."""
    skip = shutil.ignore_patterns("__pycache__", "cache")
    return [shutil.copytree(ROOT / package, folder / package, ignore=skip) for package in PACKAGES]


def alias_holder(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    aliases = client.get_registered_model(name).aliases
    return client.get_model_version(name, aliases[alias]) if alias in aliases else None


def beats(value: float, holder: ModelVersion | None, metric: Metric) -> bool:
    """Whether ``value`` improves on the holder's figure (none when there is no holder, or it was never scored on
    ``metric``): a NaN champion is beaten by any finite figure, and a NaN figure is never crowned."""
    best = float(holder.tags[metric.name]) if holder is not None and metric.name in holder.tags else None
    return metric.improves(value, best)


def register_stage(config: Config, trained: Trained, eval_metrics: dict[str, float]) -> dict:
    """Log the model in the active run, register a new version, and move the alias if it is the best so far."""
    spec = config.register
    name, alias, metric = spec.model_name or tracking.task_name(config), spec.alias, spec.metric
    if metric not in eval_metrics:
        raise ValueError(f"register.metric: {metric} is not among the evaluation metrics ({', '.join(sorted(eval_metrics))})")
    value = float(eval_metrics[metric])
    trained_config = trained.config
    kind = trained_config.dataset.kind
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / serving.TRAINED
        folder.mkdir()
        trained.write(folder)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=serving.__file__,
            artifacts={serving.TRAINED: str(folder)},
            code_paths=code_paths(Path(tmp) / "code"),
            signature=serving.signature(trained_config, kind),
            input_example=(input_example(trained_config, kind), {"adapt_steps": serving.adapt_steps(trained_config)}),
            pip_requirements=REQUIREMENTS,
            registered_model_name=name,
            model_config={"max_adapt_steps": serving.max_adapt_steps(config)},
        )
    number = info.registered_model_version
    client = MlflowClient()
    holder = alias_holder(client, name, alias)
    client.set_model_version_tag(name, number, metric, str(value))
    client.set_model_version_tag(name, number, "train_run_id", trained.run_id)
    crowned = beats(value, holder, Metric.of(config, metric))
    if crowned:
        client.set_registered_model_alias(name, alias, number)
    champion_version = int(number) if crowned else int(holder.version) if holder is not None else None  # None: a NaN first version
    mlflow.set_tags({"registered_model": name, "model_version": str(number), f"{alias}_version": str(champion_version or "")})
    print(f"registered {name} version {number} ({metric}={value:.4f}); {alias}: " + (f"version {champion_version}" if champion_version else "none"))
    outputs = {"model_name": name, "version": int(number), "alias": alias, "champion_version": champion_version}
    return {"run_id": mlflow.active_run().info.run_id, **outputs}
