"""MAML (Finn et al., 2017): differentiate the query loss through the inner loop."""

import functools

import torch

from meta_core.algorithms.base import task_loss
from meta_core.algorithms.gradient import GradientLearner
from meta_core.autodiff import grad
from meta_core.models import Params
from meta_core.registry import AlgorithmSpec, register_algorithm
from meta_core.tasks import Task


class MAML(GradientLearner):
    """Second-order MAML; ``first_order=True`` treats the inner gradients as constants (FOMAML)."""

    def __init__(self, *args, first_order: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.first_order = first_order

    def inner_grad(self, weights: Params, x, y) -> Params:
        grads = super().inner_grad(weights, x, y)
        return {k: g.detach() for k, g in grads.items()} if self.first_order else grads

    def query_loss(self, params: Params, task: Task, pre_adapt: bool):
        """The outer loss: query loss of the adapted weights, with the task's metrics as aux."""
        adapted = self.adapt(params, task)
        out = self.predict(adapted, task.query_x)
        return task_loss(self.kind, out, task.query_y), self.task_metrics(params, adapted, task, pre_adapt, out)

    def task_gradient(self, params: Params, task: Task, pre_adapt: bool = True) -> tuple[Params, dict[str, torch.Tensor]]:
        return grad(self.query_loss, has_aux=True)(params, task, pre_adapt)


register_algorithm(AlgorithmSpec("maml", MAML, "query loss differentiated through the inner loop (second order)", checkpointable=True))
register_algorithm(
    AlgorithmSpec(
        "fomaml",
        functools.partial(MAML, first_order=True),
        "the same with inner gradients held constant (first order)",
        checkpointable=True,
    )
)
