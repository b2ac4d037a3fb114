"""From a config dict to the objects that compute: algorithm (with its model) and task source."""

import numpy as np

from meta_core.algorithms import OPTIONS, Algorithm, build_algorithm
from meta_core.models import build_model
from meta_core.rl import PointGoals
from meta_core.tasks import ClassificationTasks, SinusoidTasks

KIND = {"sinusoid": "regression", "pointnav": "rl"}  # every other data set is classification
INNER_LOOPS = {"maml", "fomaml", "metasgd", "anil"}  # algorithms whose differentiated inner loop can be checkpointed


def build_learner(config: dict) -> Algorithm:
    task, model_cfg, algo = config["task"], config["model"], config["algorithm"]
    kind = KIND.get(config["data"]["name"], "classification")
    ways = task["ways"] if kind == "classification" else 1
    in_features = len(config["data"]["features"] or [None])  # a feature table's columns; one input for sinusoids
    model = build_model(
        model_cfg["name"], ways=ways, width=model_cfg["width"], image_size=config["data"]["image_size"], in_features=in_features
    )
    options = {k: algo[k] for k in OPTIONS.get(algo["name"], ())}
    if algo["name"] in INNER_LOOPS:
        options["checkpoint_inner"] = algo["checkpoint_inner"]
    return build_algorithm(algo["name"], model, kind, inner_steps=algo["inner_steps"], inner_lr=algo["inner_lr"], **options)


def vectorized(config: dict, on_gpu: bool) -> bool:
    """Whether a share's tasks run as one ``vmap`` call: ``train.vectorize``, where ``auto`` means the small
    MLP (per-task Python overhead dominates) or a GPU; the loop wins for conv nets on CPU (benchmarks/)."""
    choice = config["train"]["vectorize"]
    return (config["model"]["name"] == "mlp" or on_gpu) if choice == "auto" else choice


def build_source(config: dict, images: np.ndarray | None = None):
    """Tasks for one split: sinusoids and point-navigation goals need no data, image tasks draw from ``images``."""
    task = config["task"]
    if config["data"]["name"] == "sinusoid":
        return SinusoidTasks(task["shots"], task["queries"])
    if config["data"]["name"] == "pointnav":  # noise for the most adaptation steps training or evaluation takes
        rounds = max(config["algorithm"]["inner_steps"], *config["eval"]["steps"]) + 1
        return PointGoals(task["shots"], task["horizon"], rounds)
    return ClassificationTasks(images, task["ways"], task["shots"], task["queries"])
