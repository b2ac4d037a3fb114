"""MAML for reinforcement learning (Finn et al., 2017, section 5.3), with policy gradients inside and out.

Each inner step takes one REINFORCE step on rollouts of the current policy; the
outer loss is the REINFORCE surrogate on rollouts of the adapted policy,
differentiated through the inner steps. With ``inner_steps=0`` it is plain
policy gradient on every goal jointly: the pretrained baseline of the paper.
"""

from collections.abc import Iterator

import torch

from meta_core.algorithms.base import Algorithm
from meta_core.autodiff import grad
from meta_core.models import Params
from meta_core.registry import AlgorithmSpec, register_algorithm
from meta_core.rl import GoalTask, Rollouts, mean_return, policy_gradient_loss, rollout


class MAMLRL(Algorithm):
    """Losses are negative mean returns: ``pre_adapt_loss`` of the meta-policy, ``post_adapt_loss`` after adapting."""

    def adaptation(self, params: Params, task: GoalTask, steps: int) -> Iterator[tuple[Params, Rollouts]]:
        """The policy and its rollouts before adapting, then after each of ``steps`` policy-gradient steps.

        Rollouts after ``n`` steps use batch ``n`` of the task's noise.
        """
        weights = params
        batch = rollout(self.model, weights, task.goal, task.noise[0])
        yield weights, batch
        for n in range(1, steps + 1):
            grads = grad(lambda w, batch=batch: policy_gradient_loss(self.model, w, batch))(weights)
            weights = {k: w - self.inner_lr * grads[k] for k, w in weights.items()}
            batch = rollout(self.model, weights, task.goal, task.noise[n])
            yield weights, batch

    def outer_loss(self, params: Params, task: GoalTask):
        path = list(self.adaptation(params, task, self.inner_steps))
        adapted, batch = path[-1]
        post = -mean_return(batch)
        metrics = {"meta_loss": post, "pre_adapt_loss": -mean_return(path[0][1]), "post_adapt_loss": post}
        return policy_gradient_loss(self.model, adapted, batch), metrics

    def task_grad(self, params: Params, task: GoalTask, pre_adapt: bool = True) -> tuple[Params, dict[str, torch.Tensor]]:
        """The pre-adaptation return comes from the rollouts adaptation needs anyway, so it is always reported."""
        return grad(self.outer_loss, has_aux=True)(params, task)

    def evaluate(self, params: Params, task: GoalTask, steps: list[int]) -> dict[str, torch.Tensor]:
        """Negative mean return before adapting (``steps0_loss``) and after each count of policy-gradient steps."""
        path = self.adaptation(params, task, max(steps))
        return {f"steps{n}_loss": -mean_return(batch) for n, (_, batch) in enumerate(path) if n == 0 or n in steps}


register_algorithm(
    AlgorithmSpec(
        "maml_rl",
        MAMLRL,
        "REINFORCE surrogate of the adapted policy's rollouts, through policy-gradient inner steps",
        kinds=("rl",),
        models=("policy",),
    )
)
