"""MAML-TRPO (Finn et al. 2017, section 5.3; ``cbfinn/maml_rl``, ``tristandeleu/pytorch-maml-rl``): ``maml_rl``'s
REINFORCE inner steps, and a trust-region outer step on the adapted policies' likelihood-ratio surrogate, its KL
divergence measured after adaptation.

The learner takes the outer step itself (``outer_update``): the driver hands it the meta-batch's mean gradient and a
``query`` that its workers answer from their own tasks' sampled episodes (``task_query``): Fisher-vector products (the
Hessian of the mean KL through the inner steps, times a vector) for conjugate gradient, and the surrogate loss and KL
at the line search's candidate parameters.
"""

import numpy as np
import torch

from meta_core.algorithms.maml_rl import MAMLRL, round_of
from meta_core.autodiff import grad
from meta_core.models import Params, flatten, layout_of, unflatten
from meta_core.registry import AlgorithmSpec, positive_int, positive_number, register_algorithm
from meta_core.rl import Batch, kl_from_sampler, log_prob, step_mean
from meta_core.trust_region import trust_region_step


class MAMLTRPO(MAMLRL):
    """``max_kl``: the trust region's size; ``cg_iters`` and ``cg_damping``: conjugate gradient's; ``ls_max_steps``
    and ``ls_backtrack``: the line search's (as pytorch-maml-rl names them)."""

    def __init__(self, model, kind, *, max_kl=1e-2, cg_iters=10, cg_damping=1e-5, ls_max_steps=15, ls_backtrack=0.8, **kwargs):
        super().__init__(model, kind, **kwargs)
        self.max_kl, self.cg_iters, self.cg_damping, self.ls_max_steps, self.ls_backtrack = max_kl, cg_iters, cg_damping, ls_max_steps, ls_backtrack

    def outer_loss(self, weights: Params, batch: Batch) -> torch.Tensor:
        """Minus the likelihood-ratio surrogate against the adapted policy that sampled ``batch``."""
        ratio = (log_prob(self.model, weights, batch.observations, batch.actions) - batch.log_prob).exp()
        return -step_mean(ratio * batch.advantages, batch.mask)

    def adapted(self, params: Params, samples: Batch) -> Params:
        weights = params
        for n in range(self.inner_steps):
            weights = self.inner_step(weights, round_of(samples, n))
        return weights

    def kl(self, params: Params, samples: Batch) -> torch.Tensor:
        """Mean KL(sampling policy || the policy ``params`` adapt to) over the adapted episodes' states."""
        post = round_of(samples, self.inner_steps)
        return step_mean(kl_from_sampler(self.model, self.adapted(params, samples), post), post.mask)

    def task_query(self, name: str, params: Params, samples: Batch, vector: torch.Tensor) -> torch.Tensor:
        """``fisher_product``: the Hessian of ``kl`` at ``params`` times ``vector``; ``surrogate``: the outer loss and
        ``kl`` at ``params``."""
        if name == "fisher_product":
            v = unflatten(vector.to(torch.float32), layout_of(params))

            def directional(p: Params) -> torch.Tensor:
                g = grad(self.kl)(p, samples)
                return sum((g[k] * v[k]).sum() for k in g)

            return flatten(grad(directional)(params), torch.float64)
        weights = self.adapted(params, samples)
        post = round_of(samples, self.inner_steps)
        return torch.stack([self.outer_loss(weights, post), step_mean(kl_from_sampler(self.model, weights, post), post.mask)]).detach().double()

    def outer_update(self, flat: np.ndarray, gradient: np.ndarray, query) -> tuple[np.ndarray, dict[str, float]]:
        none = np.zeros(0)
        return trust_region_step(
            flat.astype(np.float64), gradient, lambda v: query("fisher_product", flat, v), lambda x: tuple(query("surrogate", x, none)),
            self.max_kl, self.cg_iters, self.cg_damping, self.ls_backtrack, self.ls_max_steps,
        )  # fmt: skip


register_algorithm(
    AlgorithmSpec(
        "maml_trpo",
        MAMLTRPO,
        "MAML-TRPO: REINFORCE inner steps, a trust-region outer step (conjugate gradient on Fisher-vector products, line search)",
        options=(
            positive_number("gae_lambda", 1.0, "GAE's lambda (1: discounted returns less the baseline)"),
            positive_number("max_kl", 1e-2, "the trust region's KL divergence"),
            positive_int("cg_iters", 10, "conjugate gradient's iterations"),
            positive_number("cg_damping", 1e-5, "the damping added to each Fisher-vector product"),
            positive_int("ls_max_steps", 15, "the line search's most backtracking steps"),
            positive_number("ls_backtrack", 0.8, "the line search's shrinking factor"),
        ),
        kinds=("rl",),
        models=("policy",),
        driver_step=True,
    )
)
