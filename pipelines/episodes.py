"""Fixed one-shot episodes, as in Omniglot's 20-way within-alphabet benchmark, scored with a trained learner.

An episodes folder holds ``runNN/training/classNN.png`` (one image per class),
``runNN/test/itemNN.png`` and ``runNN/class_labels.txt``, whose lines pair each
test item with its class: ``runNN/test/itemNN.png runNN/training/classNN.png``
(paths relative to the episodes folder).
"""

from pathlib import Path

import mlflow
import numpy as np
import torch

from data.files import MiB, folder_file
from data.omniglot import decode
from data.sources import DataError
from meta_core.algorithms.base import answer
from meta_core.tasks import Task, as_inputs
from pipelines import tracking
from pipelines.artifacts import load_trained, read_trained

LABELS_BYTES = MiB  # a run's class_labels.txt: a line per test item


def read_image(root: Path, path: Path, size: int) -> np.ndarray:
    """An image of the episodes folder ``root``: inside it, within the size cap, as a data source's would be."""
    if not path.is_file():
        raise DataError(f"{path}: missing image")
    return decode(folder_file(root, path), size, str(path), invert=True)


def read_episode(root: Path, run: str, size: int) -> Task:
    """One run: its training images (one per class, labels in file order) as support, its test items as queries."""
    training = sorted((root / run / "training").glob("*.png"))
    if not training:
        raise DataError(f"{root / run / 'training'}: no class images")
    labels_file = root / run / "class_labels.txt"
    if not labels_file.is_file():
        raise DataError(f"{labels_file}: missing (expected lines 'runNN/test/itemNN.png runNN/training/classNN.png')")
    index = {path.relative_to(root).as_posix(): i for i, path in enumerate(training)}
    items, targets = [], []
    for number, line in enumerate(folder_file(root, labels_file, LABELS_BYTES).decode(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in index:
            raise DataError(f"{labels_file} line {number}: expected '<test image> <one of {run}/training/*.png>', got {line!r}")
        items.append(read_image(root, root / parts[0], size))
        targets.append(index[parts[1]])
    if not items:
        raise DataError(f"{labels_file}: no test items")
    support = as_inputs(np.stack([read_image(root, path, size) for path in training]))
    return Task(support, torch.arange(len(training)), as_inputs(np.stack(items)), torch.tensor(targets))


def load_model(model_uri: str):
    """``runs:/<run_id>`` of a run that logged params.pt and config.yaml, or a local folder holding both."""
    if model_uri.startswith("runs:/"):
        run_id = model_uri.removeprefix("runs:/").strip("/")
        try:
            run = mlflow.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            raise DataError(f"{model_uri}: no such run in {mlflow.get_tracking_uri()}") from None
        logged = {a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id)}
        if not {"params.pt", "config.yaml"} <= logged:
            raise DataError(f"{model_uri}: a '{run.data.tags.get('stage')}' run, without params.pt and config.yaml (expected a train stage run)")
        return load_trained(run_id)
    folder = Path(model_uri)
    if not ((folder / "params.pt").is_file() and (folder / "config.yaml").is_file()):
        raise DataError(f"{model_uri}: expected runs:/<run_id> or a folder holding params.pt and config.yaml")
    return read_trained(folder)


def score_episodes(model_uri: str, folder: str | Path, tracking_uri: str | None = None) -> dict[str, float]:
    """Adapt on each run's training images, classify its test items; accuracy per run and overall, logged to MLflow."""
    mlflow.set_tracking_uri(tracking.tracking_uri(tracking_uri))
    config, algo, params = load_model(model_uri)
    root = Path(folder)
    runs = sorted(p.name for p in root.glob("run*") if p.is_dir())
    if not runs:
        raise DataError(f"{root}: no runNN folders of episodes")
    size, ways = config.data.image_size, config.task.ways
    episodes = {run: read_episode(root, run, size) for run in runs}
    for run, task in episodes.items():
        if len(task.support_y) != ways:
            raise DataError(f"{root / run / 'training'}: {len(task.support_y)} classes, but the model was trained for {ways} ways")
    accuracy = {}
    for run, task in episodes.items():
        predicted = answer(algo, params, task.support_x, task.support_y, task.query_x).argmax(-1)
        accuracy[run] = float((predicted == task.query_y).float().mean())
    accuracy["overall"] = float(np.mean([accuracy[run] for run in runs]))
    mlflow.set_experiment(config.experiment)
    with mlflow.start_run(run_name="episodes", tags={"stage": "episodes", "model_uri": model_uri}):
        mlflow.log_params({"model_uri": model_uri, "episodes": str(root.resolve()), "runs": len(runs)})
        for step, run in enumerate(runs):
            mlflow.log_metric("episode_acc", accuracy[run], step=step)
        mlflow.log_metric("episodes_acc", accuracy["overall"])
        mlflow.log_dict(accuracy, "episodes.json")
    return accuracy


def report(accuracy: dict[str, float]) -> str:
    return "\n".join(f"{run:<10} {acc:.4f}" for run, acc in accuracy.items())
