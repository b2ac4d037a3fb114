"""Reptile (Nichol et al., 2018): move the initialisation towards the adapted weights."""

import torch

from meta_core.algorithms.base import Algorithm
from meta_core.models import Params
from meta_core.tasks import Task


class Reptile(Algorithm):
    """The 'meta-gradient' is ``theta - phi``, so an outer SGD step of size eps is Reptile's update."""

    def task_grad(self, params: Params, task: Task) -> tuple[Params, dict[str, torch.Tensor]]:
        adapted = self.adapt(params, task.support_x, task.support_y)
        metrics = {**self.pre_adapt_metrics(params, task), **self.query_metrics(adapted, task, "post_adapt")}
        metrics["meta_loss"] = metrics["post_adapt_loss"]
        return {k: params[k] - adapted[k] for k in params}, metrics
