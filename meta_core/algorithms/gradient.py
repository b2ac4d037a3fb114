"""Adaptation by gradient steps on the support set: the inner loop of the MAML family.

The adapted state is the model's weights after ``steps`` SGD steps on the support
loss, each differentiable when taken under an outer ``grad`` (MAML differentiates
through them; Reptile and iMAML do not). ``predict`` runs the model with them.
"""

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from meta_core.algorithms.base import Algorithm, Metrics, task_loss
from meta_core.autodiff import grad
from meta_core.models import Params, forward
from meta_core.tasks import Task


class GradientLearner(Algorithm):
    """``inner_lr`` is the inner SGD step size. Meta-parameters are the model's weights plus whatever else the outer
    loop learns (Meta-SGD's learning rates, ``lr.*``). ``checkpoint_inner`` recomputes each inner step in the backward
    pass instead of keeping its activations: less memory, one more forward per step."""

    def __init__(self, model: nn.Module, kind: str, *, inner_lr: float = 0.01, checkpoint_inner: bool = False, **kwargs):
        super().__init__(model, kind, **kwargs)
        self.inner_lr, self.checkpoint_inner = inner_lr, checkpoint_inner

    def weights(self, params: Params) -> Params:
        return {k: v for k, v in params.items() if not k.startswith("lr.")}

    def fast_weights(self, weights: Params) -> Params:
        """The weights the inner loop changes (all, unless a subclass says otherwise)."""
        return weights

    def loss(self, weights: Params, x, y) -> torch.Tensor:
        return task_loss(self.kind, forward(self.model, weights, x), y)

    def checkpointing(self, weights: Params) -> bool:
        """Checkpoint only where there is a backward pass to replay into (never under ``vmap``, see step.py)."""
        return self.checkpoint_inner and torch.is_grad_enabled() and any(w.requires_grad for w in weights.values())

    def inner_grad(self, weights: Params, x, y) -> Params:
        fast = self.fast_weights(weights)
        return grad(lambda f: self.loss({**weights, **f}, x, y))(fast)

    def inner_step(self, params: Params, weights: Params, x, y) -> Params:
        """One SGD step on the support set; differentiable when called under an outer ``grad``."""
        grads = self.inner_grad(weights, x, y)
        return {k: w - self.inner_lr * grads[k] if k in grads else w for k, w in weights.items()}

    def adaptations(self, params: Params, task: Task, counts: list[int]) -> list[Params]:
        """The weights after each of ``counts`` inner steps on the support set, one step after another."""
        weights, done, states = self.weights(params), 0, []
        for n in counts:
            for _ in range(n - done):
                if self.checkpointing(weights):
                    weights = checkpoint(self.inner_step, params, weights, task.support_x, task.support_y, use_reentrant=False)
                else:
                    weights = self.inner_step(params, weights, task.support_x, task.support_y)
            done = n
            states.append(weights)
        return states

    def predict(self, adapted: Params, query_x: torch.Tensor) -> torch.Tensor:
        return forward(self.model, adapted, query_x)

    def task_metrics(self, params: Params, adapted: Params, task: Task, pre_adapt: bool, out=None) -> Metrics:
        """A task's training metrics: ``meta_loss`` (the query loss after adapting), the query metrics of the
        ``adapted`` weights (``out``: their query outputs, if computed already) and, where ``pre_adapt`` asks for
        them, those of the meta-parameters before adapting. Those cost one more forward pass over the query set,
        a large part of a conv net's meta-step, so workers ask for them only every few steps."""
        post = self.query_metrics(adapted, task, "post_adapt", out)
        pre = self.query_metrics(self.weights(params), task, "pre_adapt") if pre_adapt else {}
        return {"meta_loss": post["post_adapt_loss"], **pre, **post}
