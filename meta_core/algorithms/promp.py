"""ProMP (Rothfuss et al. 2019, ``jonasrothfuss/ProMP``): MAML for RL with the low-variance curvature (LVC) inner
objective, a clipped outer objective with a penalty on the inner steps' KL divergence, and ``outer_steps`` outer
steps on each sampled batch.

Every surrogate is a likelihood ratio to the policy that sampled the episodes (``Batch.log_prob``). At the sampling
parameters the LVC inner objective ``mean(pi_theta / pi_sampler * A)`` has the policy gradient as its gradient, and
its Hessian is ``mean(grad^2 pi_theta / pi_sampler * A)``: the curvature term the plain REINFORCE surrogate's
Hessian lacks, without the high-variance product of the whole trajectory's ratios. At later outer steps on the same
batch the ratios make the inner step an importance-weighted one, as in ProMP.
"""

import torch

from meta_core.algorithms.maml_rl import MAMLRL
from meta_core.models import Params
from meta_core.registry import AlgorithmSpec, positive_int, positive_number, register_algorithm
from meta_core.rl import Batch, kl_from_sampler, log_prob, step_mean


class ProMP(MAMLRL):
    """``clip_eps``: the outer ratio's clipping range; ``kl_coeff``: the inner KL penalty's fixed coefficient
    (ProMP's ``init_inner_kl_penalty`` with ``adaptive_inner_kl_penalty: False``, its published setting)."""

    def __init__(self, model, kind, *, clip_eps: float = 0.3, kl_coeff: float = 5e-4, outer_steps: int = 5, **kwargs):
        super().__init__(model, kind, **kwargs)
        self.clip_eps, self.kl_coeff, self.outer_steps = clip_eps, kl_coeff, outer_steps

    def ratio(self, weights: Params, batch: Batch) -> torch.Tensor:
        return (log_prob(self.model, weights, batch.observations, batch.actions) - batch.log_prob).exp()

    def inner_loss(self, weights: Params, batch: Batch) -> torch.Tensor:
        """Minus the LVC objective."""
        return -step_mean(self.ratio(weights, batch) * batch.advantages, batch.mask)

    def outer_loss(self, weights: Params, batch: Batch) -> torch.Tensor:
        """Minus PPO's clipped objective of the adapted policy against the adapted policy that sampled ``batch``."""
        ratio, adv = self.ratio(weights, batch), batch.advantages
        clipped = torch.minimum(ratio * adv, ratio.clamp(1 - self.clip_eps, 1 + self.clip_eps) * adv)
        return -step_mean(clipped, batch.mask)

    def penalty(self, steps: list[tuple[Params, Batch]]) -> torch.Tensor | float:
        """``kl_coeff`` times the mean over inner steps of KL(sampling policy || the policy at that step) on its episodes."""
        if not steps:
            return 0.0
        return self.kl_coeff * torch.stack([step_mean(kl_from_sampler(self.model, w, b), b.mask) for w, b in steps]).mean()


register_algorithm(
    AlgorithmSpec(
        "promp",
        ProMP,
        "ProMP: LVC inner steps, clipped outer objective with an inner KL penalty, several outer steps per sampled batch",
        options=(
            positive_number("gae_lambda", 1.0, "GAE's lambda (1: discounted returns less the baseline)"),
            positive_number("clip_eps", 0.3, "the outer likelihood ratio's clipping range"),
            positive_number("kl_coeff", 5e-4, "the inner KL penalty's coefficient"),
            positive_int("outer_steps", 5, "outer steps on each sampled batch (ProMP's num_promp_steps)"),
        ),
        kinds=("rl",),
        models=("policy",),
        driver_step=True,
    )
)
