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
from pipelines.artifacts import read_trained
from pipelines.config import Config
from pipelines.stages.evaluate import higher_is_better

ROOT = Path(__file__).resolve().parents[2]
# What the served model imports (the specs, and the config that names them); packed with it so `mlflow models serve`
# needs no checkout.
PACKAGES = ("meta_core", "data", "cluster", "pipelines")
REQUIREMENTS = [f"{name}=={version(name)}" for name in ("mlflow", "torch", "numpy", "pandas", "PyYAML", "pyarrow", "pillow")]


def input_example(config: Config, kind: str) -> pd.DataFrame:
    """A task of the trained shape with random inputs: shows the request format and checks the model answers it."""
    task, rng = config.task, np.random.default_rng(config.seed)
    shape = serving.input_shape(config)
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


def beats(value: float, holder: ModelVersion | None, metric: str, higher_is_better: bool) -> bool:
    """True when there is no holder, the holder was never scored on ``metric``, or ``value`` is strictly better."""
    if holder is None or metric not in holder.tags:
        return True
    best = float(holder.tags[metric])
    return value > best if higher_is_better else value < best


def register_stage(config: Config, train_run_id: str, eval_metrics: dict[str, float]) -> dict:
    """Log the model in the active run, register a new version, and move the alias if it is the best so far."""
    if config.dataset.kind == "rl":
        print("register: skipped, a policy answers an environment, not a request")
        return {}
    spec = config.register
    name, alias, metric = spec.model_name or tracking.task_name(config), spec.alias, spec.metric
    if metric not in eval_metrics:
        raise ValueError(f"register.metric: {metric} is not among the evaluation metrics ({', '.join(sorted(eval_metrics))})")
    value = float(eval_metrics[metric])
    with tempfile.TemporaryDirectory() as tmp:
        trained = Path(tmp) / serving.TRAINED
        for file in ("params.pt", "config.yaml"):
            mlflow.artifacts.download_artifacts(run_id=train_run_id, artifact_path=file, dst_path=str(trained))
        trained_config, algo, _ = read_trained(trained)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=serving.__file__,
            artifacts={serving.TRAINED: str(trained)},
            code_paths=code_paths(Path(tmp) / "code"),
            signature=serving.signature(trained_config, algo.kind),
            input_example=(input_example(trained_config, algo.kind), {"adapt_steps": algo.inner_steps}),
            pip_requirements=REQUIREMENTS,
            registered_model_name=name,
            model_config={"max_adapt_steps": serving.max_adapt_steps(config)},
        )
    number = info.registered_model_version
    client = MlflowClient()
    holder = alias_holder(client, name, alias)
    client.set_model_version_tag(name, number, metric, str(value))
    client.set_model_version_tag(name, number, "train_run_id", train_run_id)
    crowned = beats(value, holder, metric, higher_is_better(config, metric))
    if crowned:
        client.set_registered_model_alias(name, alias, number)
    champion_version = int(number if crowned else holder.version)
    mlflow.set_tags({"registered_model": name, "model_version": str(number), f"{alias}_version": str(champion_version)})
    print(f"registered {name} version {number} ({metric}={value:.4f}); {alias}: version {champion_version}")
    outputs = {"model_name": name, "version": int(number), "alias": alias, "champion_version": champion_version}
    return {"run_id": mlflow.active_run().info.run_id, **outputs}
