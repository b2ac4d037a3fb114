"""iMAML (Rajeswaran et al., 2019): implicit meta-gradients through a proximal inner loop.

The inner loop minimises ``L_support(phi) + lam/2 ||phi - theta||^2`` starting from
``phi = theta`` and is never differentiated. At its minimum ``d phi / d theta =
(I + H / lam)^-1`` with ``H`` the support-loss Hessian at ``phi``, so the
meta-gradient is that matrix times ``grad L_query(phi)``, solved by ``cg_steps`` of
conjugate gradient on Hessian-vector products. Memory is one inner step's
whatever ``inner_steps`` is, where MAML's grows with every step it unrolls.
"""

import torch

from meta_core.algorithms.base import task_loss
from meta_core.algorithms.gradient import GradientLearner
from meta_core.autodiff import grad
from meta_core.models import Params
from meta_core.registry import AlgorithmSpec, positive_int, positive_number, register_algorithm
from meta_core.tasks import Task


def dot(a: Params, b: Params) -> torch.Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def add(a: Params, b: Params, scale: torch.Tensor) -> Params:
    """``a + scale * b``."""
    return {k: a[k] + scale * b[k] for k in a}


def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den``, or 0 once conjugate gradient has converged exactly (``den == 0``)."""
    return torch.where(den != 0, num / den, torch.zeros_like(num))


def conjugate_gradient(matvec, b: Params, iterations: int) -> Params:
    """Approximate solution of ``A x = b`` (``A`` symmetric positive definite, given by ``matvec``), from ``x = 0``.

    A fixed number of iterations and no data-dependent branches, so it runs under ``vmap``.
    """
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    residual, direction = b, b
    rr = dot(residual, residual)
    for _ in range(iterations):
        a_direction = matvec(direction)
        step = ratio(rr, dot(direction, a_direction))
        x = add(x, direction, step)
        residual = add(residual, a_direction, -step)
        rr_next = dot(residual, residual)
        direction = add(residual, direction, ratio(rr_next, rr))
        rr = rr_next
    return x


class IMAML(GradientLearner):
    """``lam`` is the proximal regulariser's strength; ``cg_steps`` the conjugate-gradient iterations."""

    def __init__(self, *args, lam: float = 1.0, cg_steps: int = 5, **kwargs):
        super().__init__(*args, **kwargs)
        self.lam, self.cg_steps = lam, cg_steps

    def inner_step(self, params: Params, weights: Params, x, y) -> Params:
        """One gradient step on the support loss plus the pull ``lam (phi - theta)`` back to the meta-parameters."""
        grads = self.inner_grad(weights, x, y)
        return {k: w - self.inner_lr * (grads[k] + self.lam * (w - params[k])) for k, w in weights.items()}

    def task_gradient(self, params: Params, task: Task, pre_adapt: bool = True) -> tuple[Params, dict[str, torch.Tensor]]:
        theta = {k: v.detach() for k, v in params.items()}
        phi = {k: v.detach() for k, v in self.adapt(theta, task).items()}

        def query_loss(weights):
            out = self.predict(weights, task.query_x)
            return task_loss(self.kind, out, task.query_y), out

        query_grad, out = grad(query_loss, has_aux=True)(phi)
        support_grad = grad(lambda w: self.loss(w, task.support_x, task.support_y))

        def matvec(v: Params) -> Params:  # (I + H / lam) v, with H v = grad of (grad L_support . v)
            return add(v, grad(lambda w: dot(support_grad(w), v))(phi), 1.0 / self.lam)

        return conjugate_gradient(matvec, query_grad, self.cg_steps), self.task_metrics(theta, phi, task, pre_adapt, out)


register_algorithm(
    AlgorithmSpec(
        "imaml",
        IMAML,
        "`(I + H/lam)^-1 grad L_query(phi)` by conjugate gradient, through a proximal inner loop never differentiated",
        options=(
            positive_number("lam", 1.0, "proximal regulariser strength"),
            positive_int("cg_steps", 5, "conjugate-gradient iterations for the implicit meta-gradient"),
        ),
    )
)
