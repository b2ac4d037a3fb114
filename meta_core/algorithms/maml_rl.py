"""MAML for reinforcement learning (Finn et al., 2017, section 5.3), with policy gradients inside and out.

Each inner step takes one REINFORCE step on rollouts of the current policy; the
outer loss is the REINFORCE surrogate on rollouts of the adapted policy,
differentiated through the inner steps. With ``inner_steps=0`` it is plain
policy gradient on every goal jointly: the pretrained baseline of the paper.
"""

from typing import NamedTuple

import torch
from torch import nn

from meta_core.algorithms.base import Algorithm, Metrics
from meta_core.autodiff import grad
from meta_core.models import Params, forward
from meta_core.registry import AlgorithmSpec, register_algorithm
from meta_core.rl import GoalTask, Rollouts, mean_return, policy_gradient_loss, rollout


class Policy(NamedTuple):
    """The adapted state: the policy's weights and the rollouts it made on the task."""

    weights: Params
    rollouts: Rollouts


class MAMLRL(Algorithm):
    """Losses are negative mean returns: ``pre_adapt_loss`` of the meta-policy, ``post_adapt_loss`` after adapting.

    Its inner loop is ``inner_lr`` REINFORCE steps on the policy's own rollouts, where ``GradientLearner``'s are
    steps on a support set; the task (a goal, and the exploration noise of every batch of rollouts) is what it
    adapts to.
    """

    def __init__(self, model: nn.Module, kind: str, *, inner_lr: float = 0.01, **kwargs):
        super().__init__(model, kind, **kwargs)
        self.inner_lr = inner_lr

    def adaptations(self, params: Params, task: GoalTask, counts: list[int]) -> list[Policy]:
        """The policy with its rollouts after each of ``counts`` policy-gradient steps, each step on the rollouts of
        the policy before it. Rollouts after ``n`` steps use batch ``n`` of the task's noise."""
        weights = params
        batch = rollout(self.model, weights, task.goal, task.noise[0])
        states = [Policy(weights, batch)] * counts.count(0)
        for n in range(1, max(counts, default=0) + 1):
            grads = grad(lambda w, batch=batch: policy_gradient_loss(self.model, w, batch))(weights)
            weights = {k: w - self.inner_lr * grads[k] for k, w in weights.items()}
            batch = rollout(self.model, weights, task.goal, task.noise[n])
            states += [Policy(weights, batch)] * counts.count(n)
        return states

    def predict(self, adapted: Policy, query_x: torch.Tensor) -> torch.Tensor:
        """The mean action in each state ``query_x``."""
        return forward(self.model, adapted.weights, query_x)

    def query_metrics(self, adapted: Policy, task: GoalTask, prefix: str, out=None) -> Metrics:
        """``<prefix>_loss``: minus the mean return of the adapted policy's rollouts."""
        return {f"{prefix}_loss": -mean_return(adapted.rollouts)}

    def outer_loss(self, params: Params, task: GoalTask):
        before, after = self.adaptations(params, task, [0, self.inner_steps])
        post = self.query_metrics(after, task, "post_adapt")
        metrics = {"meta_loss": post["post_adapt_loss"], **self.query_metrics(before, task, "pre_adapt"), **post}
        return policy_gradient_loss(self.model, after.weights, after.rollouts), metrics

    def task_gradient(self, params: Params, task: GoalTask, pre_adapt: bool = True) -> tuple[Params, Metrics]:
        """The pre-adaptation return comes from the rollouts adaptation needs anyway, so it is always reported."""
        return grad(self.outer_loss, has_aux=True)(params, task)


register_algorithm(
    AlgorithmSpec(
        "maml_rl",
        MAMLRL,
        "REINFORCE surrogate of the adapted policy's rollouts, through policy-gradient inner steps",
        kinds=("rl",),
        models=("policy",),
    )
)
