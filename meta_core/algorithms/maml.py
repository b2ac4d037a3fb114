"""MAML (Finn et al., 2017): differentiate the query loss through the inner loop."""

import torch
from meta_core.autodiff import grad

from meta_core.algorithms.base import Algorithm, task_loss
from meta_core.models import Params, forward
from meta_core.tasks import Task


class MAML(Algorithm):
    """Second-order MAML; ``first_order=True`` treats the inner gradients as constants (FOMAML)."""

    def __init__(self, *args, first_order: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.first_order = first_order

    def inner_grad(self, weights: Params, x, y) -> Params:
        grads = super().inner_grad(weights, x, y)
        return {k: g.detach() for k, g in grads.items()} if self.first_order else grads

    def query_loss(self, params: Params, task: Task):
        """The outer loss: query loss of the adapted weights, with pre/post metrics as aux."""
        adapted = self.adapt(params, task.support_x, task.support_y)
        out = forward(self.model, adapted, task.query_x)
        loss = task_loss(self.kind, out, task.query_y)
        metrics = {**self.pre_adapt_metrics(params, task), **self.query_metrics(adapted, task, "post_adapt", out)}
        return loss, {"meta_loss": loss.detach(), **metrics}

    def task_grad(self, params: Params, task: Task) -> tuple[Params, dict[str, torch.Tensor]]:
        return grad(self.query_loss, has_aux=True)(params, task)
