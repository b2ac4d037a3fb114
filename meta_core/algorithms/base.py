"""What every algorithm is: a per-task meta-gradient and a test-time adaptation rule.

Everything is a pure function of a parameter dict, written with ``torch.func``
so that one task's meta-gradient can also be ``vmap``-ed over a stack of tasks.
Distribution, checkpoints and tracking only ever call ``init``, ``task_grad``
and ``adapt``: a new algorithm is one small class and nothing else changes.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad
from torch.utils.checkpoint import checkpoint

from meta_core.models import Params, forward
from meta_core.tasks import Task


def task_loss(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, y) if kind == "regression" else F.cross_entropy(out, y)


def accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out.argmax(-1) == y).float().mean()


class Algorithm:
    """An algorithm owns the model's architecture, its loss and the inner loop.

    ``kind`` is ``"regression"`` (MSE) or ``"classification"`` (cross-entropy,
    with accuracy in the metrics). Meta-parameters are the model's weights plus
    whatever else the outer loop learns (Meta-SGD's learning rates, ``lr.*``).
    ``checkpoint_inner`` recomputes each inner step in the backward pass instead
    of keeping its activations: less memory, one more forward per step.
    """

    def __init__(self, model: nn.Module, kind: str, inner_steps: int = 1, inner_lr: float = 0.01, checkpoint_inner: bool = False):
        self.model, self.kind = model, kind
        self.inner_steps, self.inner_lr = inner_steps, inner_lr
        self.checkpoint_inner = checkpoint_inner

    def init(self, weights: Params) -> Params:
        """Meta-parameters at the start of training, from freshly initialised weights."""
        return dict(weights)

    def task_grad(self, params: Params, task: Task) -> tuple[Params, dict[str, torch.Tensor]]:
        """This task's meta-gradient w.r.t. every meta-parameter, and its metrics."""
        raise NotImplementedError

    # -- the inner loop --------------------------------------------------------------
    def weights(self, params: Params) -> Params:
        return {k: v for k, v in params.items() if not k.startswith("lr.")}

    def adapted(self, weights: Params) -> Params:
        """The weights the inner loop changes (all, unless a subclass says otherwise)."""
        return weights

    def loss(self, weights: Params, x, y) -> torch.Tensor:
        return task_loss(self.kind, forward(self.model, weights, x), y)

    def checkpointing(self, weights: Params) -> bool:
        """Whether this inner loop is being checkpointed: then it is differentiated with plain autograd,
        as ``torch.func`` transforms refuse the saved-tensor hooks that checkpointing relies on."""
        return self.checkpoint_inner and torch.is_grad_enabled() and any(w.requires_grad for w in weights.values())

    def inner_grad(self, weights: Params, x, y) -> Params:
        fast = self.adapted(weights)
        if self.checkpointing(weights):
            grads = torch.autograd.grad(self.loss(weights, x, y), list(fast.values()), create_graph=True)
            return dict(zip(fast, grads))
        return grad(lambda f: self.loss({**weights, **f}, x, y))(fast)

    def inner_step(self, params: Params, weights: Params, x, y) -> Params:
        """One SGD step on the support set; differentiable when called under an outer ``grad``."""
        grads = self.inner_grad(weights, x, y)
        return {k: w - self.inner_lr * grads[k] if k in grads else w for k, w in weights.items()}

    def adapt(self, params: Params, x, y, steps: int | None = None) -> Params:
        """Model weights after ``steps`` (default: the trained number of) inner steps on ``(x, y)``."""
        weights = self.weights(params)
        for _ in range(self.inner_steps if steps is None else steps):
            if self.checkpointing(weights):
                weights = checkpoint(self.inner_step, params, weights, x, y, use_reentrant=False)
            else:
                weights = self.inner_step(params, weights, x, y)
        return weights

    # -- metrics -----------------------------------------------------------------------
    def query_metrics(self, weights: Params, task: Task, prefix: str, out=None) -> dict[str, torch.Tensor]:
        """``<prefix>_loss`` (and ``<prefix>_acc``) on the query set; pass ``out`` to reuse a forward pass."""
        out = forward(self.model, weights, task.query_x) if out is None else out
        metrics = {f"{prefix}_loss": task_loss(self.kind, out, task.query_y).detach()}
        if self.kind == "classification":
            metrics[f"{prefix}_acc"] = accuracy(out, task.query_y)
        return metrics

    def evaluate(self, params: Params, task: Task, steps: list[int]) -> dict[str, torch.Tensor]:
        """Query metrics before adaptation (``steps0_*``) and after each count in ``steps``."""
        weights = self.weights(params)
        metrics = self.query_metrics(weights, task, "steps0")
        done = 0
        for n in sorted(steps):
            for _ in range(n - done):
                weights = self.inner_step(params, weights, task.support_x, task.support_y)
            done = n
            metrics.update(self.query_metrics(weights, task, f"steps{n}"))
        return metrics
