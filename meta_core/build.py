"""From a config dict to the objects that compute: algorithm (with its model) and task source."""

import numpy as np

from meta_core.algorithms import Algorithm, build_algorithm
from meta_core.models import build_model
from meta_core.tasks import ClassificationTasks, SinusoidTasks


def build_learner(config: dict) -> Algorithm:
    task, model_cfg, algo = config["task"], config["model"], config["algorithm"]
    image_task = config["data"]["name"] != "sinusoid"
    model = build_model(model_cfg["name"], ways=task["ways"], width=model_cfg["width"])
    kind = "classification" if image_task else "regression"
    return build_algorithm(algo["name"], model, kind, inner_steps=algo["inner_steps"], inner_lr=algo["inner_lr"])


def build_source(config: dict, images: np.ndarray | None = None):
    """Tasks for one split: sinusoids need no data, image tasks draw from ``images``."""
    task = config["task"]
    if config["data"]["name"] == "sinusoid":
        return SinusoidTasks(task["shots"], task["queries"])
    return ClassificationTasks(images, task["ways"], task["shots"], task["queries"])
