"""Reptile (Nichol et al., 2018): move the initialisation towards the adapted weights."""

import torch

from meta_core.algorithms.gradient import GradientLearner
from meta_core.models import Params
from meta_core.registry import AlgorithmSpec, register_algorithm
from meta_core.tasks import Task


class Reptile(GradientLearner):
    """The 'meta-gradient' is ``theta - phi``, so an outer SGD step of size eps is Reptile's update."""

    def task_gradient(self, params: Params, task: Task, pre_adapt: bool = True) -> tuple[Params, dict[str, torch.Tensor]]:
        adapted = self.adapt(params, task)
        return {k: params[k] - adapted[k] for k in params}, self.task_metrics(params, adapted, task, pre_adapt)


register_algorithm(AlgorithmSpec("reptile", Reptile, "`theta - adapted weights`"))
