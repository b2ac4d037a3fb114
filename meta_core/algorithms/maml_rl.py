"""MAML for reinforcement learning (Finn et al., 2017, section 5.3), with policy gradients inside and out.

A meta-step first samples (``sample``): each task's episodes with the meta-policy, an inner policy-gradient step on
them, episodes of the adapted policy, and so on for ``inner_steps``; all of a share's tasks step as one batch of
environments. ``task_gradient`` then differentiates the outer surrogate on the last round's episodes through the
inner steps on the earlier rounds' episodes, recomputed from the parameters: sampling needs no gradient, and the
gradient no environment. With ``inner_steps=0`` it is plain policy gradient on every task jointly: the pretrained
baseline of the paper.
"""

import time
from typing import NamedTuple

import torch
from torch import nn

from meta_core.algorithms.base import Algorithm, Metrics
from meta_core.autodiff import grad
from meta_core.envs import EnvTask
from meta_core.models import Params, forward
from meta_core.registry import AlgorithmSpec, positive_number, register_algorithm
from meta_core.rl import DISCOUNT, Batch, Episodes, log_prob, mean_return, processed, run_episodes, stacked, step_mean
from meta_core.tasks import Task


class Policy(NamedTuple):
    """The adapted state: the policy's weights and the processed episodes it ran on the task."""

    weights: Params
    batch: Batch


def recorded(task: Task, observation: int) -> Episodes:
    """Recorded episodes as a ``Task``: ``support_x`` each step's observation and action side by side, (episodes,
    horizon, observation + action); ``support_y`` its reward, (episodes, horizon); every step taken."""
    x, rewards = task.support_x, task.support_y
    return Episodes(x[..., :observation], x[..., observation:], rewards, torch.ones_like(rewards))


def round_of(samples: Batch, n: int) -> Batch:
    """Round ``n`` of a task's samples (every field has a leading round dimension)."""
    return Batch(*(x[n] for x in samples))


def row(weights: Params, i: int) -> Params:
    return {k: w[i] for k, w in weights.items()}


class MAMLRL(Algorithm):
    """Losses are negative mean returns: ``pre_adapt_loss`` of the meta-policy, ``post_adapt_loss`` after adapting.

    Its inner loop is ``inner_lr`` steps on the REINFORCE surrogate of the policy's own episodes, with advantages
    from a per-task linear baseline and GAE (``gae_lambda``); the outer surrogate is REINFORCE on the adapted policy's.
    """

    def __init__(self, model: nn.Module, kind: str, *, inner_lr: float = 0.1, gae_lambda: float = 1.0, **kwargs):
        super().__init__(model, kind, **kwargs)
        self.inner_lr, self.gae_lambda = inner_lr, gae_lambda

    def inner_loss(self, weights: Params, batch: Batch) -> torch.Tensor:
        """The surrogate whose gradient is the inner policy-gradient step's direction."""
        return -step_mean(log_prob(self.model, weights, batch.observations, batch.actions) * batch.advantages, batch.mask)

    def outer_loss(self, weights: Params, batch: Batch) -> torch.Tensor:
        """The surrogate of the adapted policy's episodes whose gradient (through adaptation) is the meta-gradient."""
        return -step_mean(log_prob(self.model, weights, batch.observations, batch.actions) * batch.advantages, batch.mask)

    def penalty(self, steps: list[tuple[Params, Batch]]) -> torch.Tensor | float:
        """A term added to the outer loss, of each inner step's weights and the episodes it stepped on."""
        return 0.0

    def inner_step(self, weights: Params, batch: Batch) -> Params:
        grads = grad(self.inner_loss)(weights, batch)
        return {k: w - self.inner_lr * grads[k] for k, w in weights.items()}

    def rounds(self, params: Params, tasks: list[EnvTask], count: int) -> tuple[list[list[tuple[Params, Batch]]], dict[str, float]]:
        """``count`` rounds of every task's episodes, the first with ``params``, each next with the weights an inner
        step on the round before gives; per task, each round's weights and processed episodes; and the time taken."""
        weights, per_task = stacked(params, len(tasks)), [[] for _ in tasks]
        times = {"env_s": 0.0, "policy_s": 0.0}
        for n in range(count):
            with torch.no_grad():  # the first round's policy is the same for every task
                episodes, spent = run_episodes(self.model, params if n == 0 else weights, tasks, n, shared=n == 0)
            for k, v in spent.items():
                times[k] += v
            with torch.no_grad():
                for i, history in enumerate(per_task):
                    history.append(
                        (
                            row(weights, i),
                            processed(self.model, row(weights, i), type(episodes)(*(x[i] for x in episodes)), DISCOUNT, self.gae_lambda),
                        )
                    )
            if n + 1 < count:
                adapted = [self.inner_step(*history[-1]) for history in per_task]
                weights = {k: torch.stack([w[k].detach() for w in adapted]) for k in weights}
        return per_task, times

    def sample(self, behaviour: Params, tasks: list[EnvTask]) -> tuple[list[Batch], Metrics]:
        """Each task's rounds of episodes for one meta-step, from the ``behaviour`` parameters, stacked (round first);
        the environment steps taken, and the seconds spent sampling, stepping environments and in the policy."""
        started = time.perf_counter()
        per_task, times = self.rounds(behaviour, tasks, self.inner_steps + 1)
        samples = [Batch(*(torch.stack(parts) for parts in zip(*(batch for _, batch in history), strict=True))) for history in per_task]
        steps = sum(float(s.mask.sum()) for s in samples)
        metrics = {"env_steps": steps, "sample_s": time.perf_counter() - started, **times}
        return samples, {k: torch.tensor(v, dtype=torch.float64) for k, v in metrics.items()}

    def adaptations(self, params: Params, task: EnvTask | Task, counts: list[int]) -> list[Policy]:
        """The policy with its episodes after each of ``counts`` inner steps, each step on the episodes of the policy
        before it (episodes after ``n`` steps are the task's round ``n``). A ``Task`` of recorded transitions
        (``recorded``, as a served request brings them) has no environment: each step adapts to those episodes."""
        if isinstance(task, Task):
            return self.adapted_to_recorded(params, recorded(task, self.input_shape[-1]), counts)
        (history,), _ = self.rounds(params, [task], max(counts, default=0) + 1)
        return [Policy(*history[n]) for n in counts]

    def adapted_to_recorded(self, params: Params, episodes: Episodes, counts: list[int]) -> list[Policy]:
        """After each of ``counts`` inner steps, every one on ``episodes`` (advantages and sampler as at ``params``)."""
        weights, states = params, []
        with torch.no_grad():
            batch = processed(self.model, params, episodes, DISCOUNT, self.gae_lambda)
        for n in range(max(counts, default=0) + 1):
            weights = weights if n == 0 else self.inner_step(weights, batch)
            states += [Policy(weights, batch)] * counts.count(n)
        return states

    def predict(self, adapted: Policy, query_x: torch.Tensor) -> torch.Tensor:
        """The mean action in each state ``query_x``."""
        return forward(self.model, adapted.weights, query_x)

    def query_metrics(self, adapted: Policy, task: EnvTask, prefix: str, out=None) -> Metrics:
        """``<prefix>_return``: the mean return of the adapted policy's episodes; ``<prefix>_loss``: minus it."""
        value = mean_return(adapted.batch)
        return {f"{prefix}_loss": -value, f"{prefix}_return": value}

    def meta_loss(self, params: Params, samples: Batch):
        weights, steps = params, []
        for n in range(self.inner_steps):
            steps.append((weights, round_of(samples, n)))
            weights = self.inner_step(weights, round_of(samples, n))
        before, after = mean_return(round_of(samples, 0)), mean_return(round_of(samples, self.inner_steps))
        metrics = {
            "meta_loss": -after, "pre_adapt_loss": -before, "post_adapt_loss": -after,
            "return_pre": before, "return_post": after, "adaptation_delta": after - before,
        }  # fmt: skip
        return self.outer_loss(weights, round_of(samples, self.inner_steps)) + self.penalty(steps), metrics

    def task_gradient(self, params: Params, samples: Batch, pre_adapt: bool = True) -> tuple[Params, Metrics]:
        """The meta-gradient from a task's sampled rounds (``sample``); the pre-adaptation return comes from the
        episodes adaptation needs anyway, so it is always reported."""
        return grad(self.meta_loss, has_aux=True)(params, samples)


register_algorithm(
    AlgorithmSpec(
        "maml_rl",
        MAMLRL,
        "REINFORCE surrogate of the adapted policy's episodes, through policy-gradient inner steps",
        options=(positive_number("gae_lambda", 1.0, "GAE's lambda (1: discounted returns less the baseline)"),),
        kinds=("rl",),
        models=("policy",),
    )
)
