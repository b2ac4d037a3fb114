"""Episodes of a Gaussian policy in a batch of task environments, and what policy-gradient learners read of them.

``run_episodes`` steps the episodes of many tasks together, each task with its own policy weights, with actions
``mean + std * noise`` from each task's own noise: given the weights, the episodes are a pure function of the tasks.
``processed`` turns one task's episodes into a ``Batch``: per-step advantages from a linear feature baseline fitted
to that task's returns and generalised advantage estimation, normalised per task (as ``cbfinn/maml_rl``,
``jonasrothfuss/ProMP`` and ``tristandeleu/pytorch-maml-rl`` do), and the sampling policy's own log-densities.
"""

import functools
import math
import time
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.func import vmap

from meta_core.envs import EnvTask
from meta_core.models import Params, forward

DISCOUNT = 0.99
BASELINE_REG = 1e-5  # the ridge of the baseline's least squares, raised tenfold while the fit is not finite


class Episodes(NamedTuple):
    """Per task, per episode, per step (tasks, episodes, horizon, ...)."""

    observations: torch.Tensor
    actions: torch.Tensor  # as sampled, before any clipping by the environment
    rewards: torch.Tensor  # 0 after an episode's end
    mask: torch.Tensor  # 1 for the steps an episode took, 0 after its end


class Batch(NamedTuple):
    """One task's round of episodes as a learner reads it (episodes, horizon, ...), with the sampling policy's
    log-density of each action and its mean (for likelihood ratios and KL divergences to it)."""

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    log_std: torch.Tensor  # (action,)

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in self))


def stacked(params: Params, tasks: int) -> Params:
    """The same weights for every task, with a leading task dimension."""
    return {k: v.unsqueeze(0).expand(tasks, *v.shape) for k, v in params.items()}


def run_episodes(policy: nn.Module, weights: Params, tasks: list[EnvTask], round_: int, shared: bool = False) -> tuple[Episodes, dict[str, float]]:
    """Round ``round_`` of each task's episodes, all stepped as one batch, task ``i`` acting with ``weights``' row
    ``i`` (or, ``shared``, every task with ``weights`` themselves: one forward pass a step); and the seconds spent
    stepping environments (``env_s``) and in the policy (``policy_s``)."""
    family = tasks[0].family
    n_tasks, episodes, horizon = len(tasks), family.episodes, family.horizon
    goals = np.repeat(np.stack([t.goal.numpy() for t in tasks]).astype(np.float64), episodes, axis=0)
    seeds = np.concatenate([t.seeds[round_].numpy() for t in tasks])
    noise = torch.stack([t.noise[round_] for t in tasks])  # (tasks, episodes, horizon, action)
    per_task = vmap(functools.partial(forward, policy))
    means = (lambda w, obs: forward(policy, w, obs.flatten(0, 1)).view(*obs.shape[:2], -1)) if shared else per_task
    std = weights["log_std"].exp().expand(n_tasks, -1).unsqueeze(1)  # (tasks, 1, action)
    env_s = policy_s = 0.0
    started = time.perf_counter()
    observation = family.reset(goals, seeds)
    env_s += time.perf_counter() - started
    alive = np.ones(n_tasks * episodes, bool)
    observations, actions, rewards, masks = [], [], [], []
    for t in range(horizon):
        started = time.perf_counter()
        obs = torch.from_numpy(observation.astype(np.float32)).view(n_tasks, episodes, -1)
        action = means(weights, obs) + std * noise[:, :, t]
        policy_s += time.perf_counter() - started
        started = time.perf_counter()
        observation, reward, done = family.step(action.reshape(n_tasks * episodes, -1).double().numpy())
        env_s += time.perf_counter() - started
        observations.append(obs)
        actions.append(action)
        rewards.append(torch.from_numpy(np.where(alive, reward, 0.0).astype(np.float32)).view(n_tasks, episodes))
        masks.append(torch.from_numpy(alive.astype(np.float32)).view(n_tasks, episodes))
        alive = alive & ~done
    episodes_ = Episodes(*(torch.stack(x, 2) for x in (observations, actions, rewards, masks)))
    return episodes_, {"env_s": env_s, "policy_s": policy_s}


def discounted_sums(values: np.ndarray, discount: float) -> np.ndarray:
    """``out[..., t] = sum_k discount^k values[..., t + k]`` along the last axis."""
    out, running = np.zeros_like(values), np.zeros(values.shape[:-1])
    for t in reversed(range(values.shape[-1])):
        running = values[..., t] + discount * running
        out[..., t] = running
    return out


def baseline_features(observations: np.ndarray) -> np.ndarray:
    """The linear feature baseline's features (Duan et al. 2016): observations clipped to [-10, 10], their squares,
    time / 100 and its square and cube, and a constant."""
    obs = np.clip(observations, -10, 10)
    t = np.broadcast_to((np.arange(obs.shape[-2]) / 100.0)[:, None], (*obs.shape[:-1], 1))
    return np.concatenate([obs, obs**2, t, t**2, t**3, np.ones_like(t)], axis=-1)


def fitted_baseline(observations: np.ndarray, returns: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each step's return as predicted by ridge regression on ``baseline_features``, fitted to the steps taken."""
    features = baseline_features(observations)
    taken = features[mask > 0]
    reg = BASELINE_REG
    for _ in range(5):
        coeffs = np.linalg.lstsq(taken.T @ taken + reg * np.eye(taken.shape[1]), taken.T @ returns[mask > 0], rcond=-1)[0]
        if np.isfinite(coeffs).all():
            break
        reg *= 10
    return (features @ coeffs) * mask


def advantages(rewards: np.ndarray, observations: np.ndarray, mask: np.ndarray, discount: float, gae_lambda: float) -> np.ndarray:
    """One task's per-step advantages (episodes, horizon): GAE over the fitted baseline, then normalised to mean 0
    and standard deviation 1 over the steps taken (0 after an episode's end)."""
    rewards, mask = rewards.astype(np.float64), mask.astype(np.float64)
    baseline = fitted_baseline(observations.astype(np.float64), discounted_sums(rewards, discount), mask)
    following = np.concatenate([baseline[:, 1:], np.zeros_like(baseline[:, :1])], axis=1)
    gae = discounted_sums(rewards + discount * following - baseline, discount * gae_lambda) * mask
    taken = gae[mask > 0]
    return (gae - taken.mean()) / (taken.std() + 1e-8) * mask


def processed(policy: nn.Module, weights: Params, episodes: Episodes, discount: float, gae_lambda: float) -> Batch:
    """One task's episodes (no task dimension) as a ``Batch``, with ``weights`` (the policy that sampled them)."""
    adv = advantages(episodes.rewards.numpy(), episodes.observations.numpy(), episodes.mask.numpy(), discount, gae_lambda)
    mean = forward(policy, weights, episodes.observations)
    return Batch(
        *episodes, torch.from_numpy(adv.astype(np.float32)), gaussian_log_prob(mean, weights["log_std"], episodes.actions), mean, weights["log_std"]
    )


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return (-0.5 * ((actions - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def log_prob(policy: nn.Module, params: Params, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Log-density of each action under the Gaussian policy ``params``."""
    return gaussian_log_prob(forward(policy, params, observations), params["log_std"], actions)


def kl_from_sampler(policy: nn.Module, params: Params, batch: Batch) -> torch.Tensor:
    """Per step, KL(sampling policy || ``params``) of the diagonal Gaussians in the batch's states."""
    mean, log_std = forward(policy, params, batch.observations), params["log_std"]
    var_ratio = ((batch.log_std - log_std) * 2).exp()
    return (((batch.mean - mean) ** 2 / (2 * (log_std * 2).exp())) + 0.5 * (var_ratio - 1) - (batch.log_std - log_std)).sum(-1)


def step_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean over the steps taken."""
    return (values * mask).sum() / mask.sum()


def mean_return(batch: Batch | Episodes) -> torch.Tensor:
    """Undiscounted return, averaged over episodes (of the last two dimensions' episodes and steps)."""
    return batch.rewards.sum(-1).mean(-1)
