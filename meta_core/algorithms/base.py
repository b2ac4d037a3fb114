"""What every algorithm is: a per-task meta-gradient and a test-time adaptation rule.

Everything is a pure function of a parameter dict, differentiated with
``meta_core.autodiff.grad`` so that one task's meta-gradient can also be
``vmap``-ed over a stack of tasks.
Distribution, checkpoints and tracking only ever call ``init``, ``task_grad``
and ``adapt``: a new algorithm is one small class with its ``AlgorithmSpec``
(``meta_core.registry``), and nothing else changes.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from meta_core.autodiff import grad
from meta_core.models import Params, forward, init_params
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
    ``input_shape`` is one example's shape, for learners that generate examples.
    """

    # Whether ``task_grad``, ``evaluate`` and ``predict`` draw random numbers (from torch's default generator). The
    # callers then seed it from each task's key (``meta_core.tasks.seeded_noise``) and run task by task, never vmap-ed:
    # a task sees the same noise on any worker, as it sees the same examples.
    draws_noise = False

    def __init__(
        self, model: nn.Module, kind: str, inner_steps: int = 1, inner_lr: float = 0.01, checkpoint_inner: bool = False,
        input_shape: tuple[int, ...] | None = None,
    ):  # fmt: skip
        self.model, self.kind = model, kind
        self.inner_steps, self.inner_lr = inner_steps, inner_lr
        self.checkpoint_inner, self.input_shape = checkpoint_inner, input_shape

    def init(self, weights: Params) -> Params:
        """Meta-parameters at the start of training, from freshly initialised weights."""
        return dict(weights)

    def initial_params(self, seed: int) -> Params:
        """The meta-parameters training starts from: the model's weights drawn from ``seed``, then ``init``."""
        return self.init(init_params(self.model, seed))

    def task_grad(self, params: Params, task: Task, pre_adapt: bool = True) -> tuple[Params, dict[str, torch.Tensor]]:
        """This task's meta-gradient w.r.t. every meta-parameter, and its metrics (``task_metrics``)."""
        raise NotImplementedError

    # -- the inner loop --------------------------------------------------------------
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

    def adapt(self, params: Params, x, y, steps: int | None = None) -> Params:
        """Model weights after ``steps`` (default: the trained number of) inner steps on ``(x, y)``."""
        weights = self.weights(params)
        for _ in range(self.inner_steps if steps is None else steps):
            if self.checkpointing(weights):
                weights = checkpoint(self.inner_step, params, weights, x, y, use_reentrant=False)
            else:
                weights = self.inner_step(params, weights, x, y)
        return weights

    def predict(self, params: Params, support_x, support_y, query_x, steps: int | None = None) -> torch.Tensor:
        """Outputs for ``query_x`` once the learner has adapted to the labelled support set."""
        return forward(self.model, self.adapt(params, support_x, support_y, steps), query_x)

    # -- metrics -----------------------------------------------------------------------
    def query_metrics(self, weights: Params, task: Task, prefix: str, out=None) -> dict[str, torch.Tensor]:
        """``<prefix>_loss`` (and ``<prefix>_acc``) on the query set; pass ``out`` to reuse a forward pass.

        A fresh forward pass runs without recording a graph: metrics are never differentiated.
        """
        if out is None:
            with torch.no_grad():
                out = forward(self.model, weights, task.query_x)
        metrics = {f"{prefix}_loss": task_loss(self.kind, out, task.query_y).detach()}
        if self.kind == "classification":
            metrics[f"{prefix}_acc"] = accuracy(out, task.query_y)
        return metrics

    def task_metrics(self, params: Params, adapted: Params, task: Task, pre_adapt: bool, out=None) -> dict[str, torch.Tensor]:
        """A task's training metrics: ``meta_loss`` (the query loss after adapting), the query metrics of the
        ``adapted`` weights (``out``: their query outputs, if computed already) and, where ``pre_adapt`` asks for
        them, those of the meta-parameters before adapting. Those cost one more forward pass over the query set,
        a large part of a conv net's meta-step, so workers ask for them only every few steps."""
        post = self.query_metrics(adapted, task, "post_adapt", out)
        pre = self.query_metrics(self.weights(params), task, "pre_adapt") if pre_adapt else {}
        return {"meta_loss": post["post_adapt_loss"], **pre, **post}

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
