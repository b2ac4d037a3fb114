"""The trust-region outer step (TRPO, Schulman et al. 2015), as MAML-TRPO takes it: conjugate gradient on
Fisher-vector products for the natural gradient direction, scaled to the trust region's edge, then a backtracking
line search that keeps the surrogate loss improving and the KL divergence inside the region.

Plain functions of vectors: the products and the surrogate come from callables, which the cluster's driver answers
from its workers' tasks (``cluster.driver.Driver.mean_query``) and a test from a known quadratic.
"""

from collections.abc import Callable

import numpy as np

Vector = np.ndarray


def conjugate_gradient(product: Callable[[Vector], Vector], b: Vector, iterations: int, tolerance: float = 1e-10) -> Vector:
    """``x`` with ``product(x) ~ b``, from ``iterations`` steps of conjugate gradient from zero."""
    x, r = np.zeros_like(b), b.copy()
    p, rr = r.copy(), r @ r
    for _ in range(iterations):
        if rr < tolerance:
            break
        Ap = product(p)
        alpha = rr / (p @ Ap)
        x, r = x + alpha * p, r - alpha * Ap
        rr, rr_old = r @ r, rr
        p = r + rr / rr_old * p
    return x


def trust_region_step(
    flat: Vector, gradient: Vector, fisher_product: Callable[[Vector], Vector], surrogate: Callable[[Vector], tuple[float, float]],
    max_kl: float, cg_iters: int, damping: float, backtrack: float, max_backtracks: int,
) -> tuple[Vector, dict[str, float]]:  # fmt: skip
    """New parameters from ``flat``, given the surrogate loss's ``gradient`` there: along the natural gradient
    ``F^-1 gradient`` (``fisher_product(v)``: ``F v``, damped by ``damping``), scaled so that the quadratic model of
    the KL is ``max_kl``, shrunk by ``backtrack`` until ``surrogate(x)`` (loss, KL) has a lower loss than at ``flat``
    and a KL within ``max_kl``; ``flat`` itself if no step of ``max_backtracks`` does. Also what the search found."""
    damped = lambda v: fisher_product(v) + damping * v  # noqa: E731
    direction = conjugate_gradient(damped, gradient, cg_iters)
    curvature = 0.5 * direction @ damped(direction)
    step = direction / np.sqrt(curvature / max_kl)
    loss_before, _ = surrogate(flat)
    size = 1.0
    for tried in range(1, max_backtracks + 1):
        candidate = flat - size * step
        loss, kl = surrogate(candidate)
        if loss < loss_before and kl <= max_kl:
            return candidate, {"surrogate_improvement": loss_before - loss, "kl": kl, "line_search_steps": tried}
        size *= backtrack
    return flat, {"surrogate_improvement": 0.0, "kl": 0.0, "line_search_steps": max_backtracks}
