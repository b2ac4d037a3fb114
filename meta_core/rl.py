"""2D point navigation (Finn et al., 2017, section 5.3) as a task source, and its rollouts.

A task is a goal in [-0.5, 0.5]^2. The agent starts at the origin, moves by its
action clipped to [-0.1, 0.1] per coordinate, and is rewarded minus its distance
to the goal after each move. The exploration noise for every batch of rollouts
is drawn with the goal from the task's own generator, so a rollout is a pure
function of (parameters, task): reproducible, recomputable on any worker, and
batchable with ``vmap``.
"""

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from meta_core.models import Params, forward

MAX_STEP = 0.1
GOAL_RANGE = 0.5
DISCOUNT = 0.99


class GoalTask(NamedTuple):
    goal: torch.Tensor  # (2,)
    noise: torch.Tensor  # (rounds, rollouts, horizon, 2): standard normal, one slice per batch of rollouts

    def to(self, device) -> "GoalTask":
        return GoalTask(*(t.to(device, non_blocking=True) for t in self))


class PointGoals:
    """Goals with ``rounds`` batches of ``rollouts`` trajectories' worth of noise (one per adaptation step, plus one)."""

    def __init__(self, rollouts: int, horizon: int, rounds: int):
        self.rollouts, self.horizon, self.rounds = rollouts, horizon, rounds

    def sample(self, rng: np.random.Generator) -> GoalTask:
        goal = rng.uniform(-GOAL_RANGE, GOAL_RANGE, size=2).astype(np.float32)
        noise = rng.standard_normal((self.rounds, self.rollouts, self.horizon, 2), dtype=np.float32)
        return GoalTask(torch.from_numpy(goal), torch.from_numpy(noise))


class Rollouts(NamedTuple):
    states: torch.Tensor  # (rollouts, horizon, 2)
    actions: torch.Tensor  # (rollouts, horizon, 2), before clipping
    rewards: torch.Tensor  # (rollouts, horizon)


def rollout(policy: nn.Module, params: Params, goal: torch.Tensor, noise: torch.Tensor) -> Rollouts:
    """Trajectories from the origin with actions ``mean + std * noise``; nothing here is differentiated."""
    params = {k: v.detach() for k, v in params.items()}
    std = params["log_std"].exp()
    position = noise.new_zeros(noise.shape[0], 2)
    states, actions, rewards = [], [], []
    for t in range(noise.shape[1]):
        action = forward(policy, params, position) + std * noise[:, t]
        states.append(position)
        actions.append(action)
        position = position + action.clamp(-MAX_STEP, MAX_STEP)
        rewards.append(-(position - goal).norm(dim=-1))
    return Rollouts(torch.stack(states, 1), torch.stack(actions, 1), torch.stack(rewards, 1))


def mean_return(batch: Rollouts) -> torch.Tensor:
    """Undiscounted return, averaged over trajectories."""
    return batch.rewards.sum(-1).mean()


def advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Discounted rewards-to-go minus their mean across trajectories at each time step, scaled to unit variance."""
    horizon = rewards.shape[-1]
    lag = torch.arange(horizon, device=rewards.device)
    lag = lag.unsqueeze(0) - lag.unsqueeze(1)  # [t, t'] = t' - t
    discount = torch.where(lag >= 0, DISCOUNT ** lag.clamp(min=0).float(), torch.zeros((), device=rewards.device))
    to_go = rewards @ discount.T
    centred = to_go - to_go.mean(0)
    return centred / (centred.pow(2).mean().sqrt() + 1e-8)


def log_prob(policy: nn.Module, params: Params, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Log-density of each action under the Gaussian policy ``params``."""
    mean, log_std = forward(policy, params, states), params["log_std"]
    return (-0.5 * ((actions - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def policy_gradient_loss(policy: nn.Module, params: Params, batch: Rollouts) -> torch.Tensor:
    """REINFORCE surrogate: its gradient is the policy gradient estimated from ``batch``."""
    return -(log_prob(policy, params, batch.states, batch.actions) * advantages(batch.rewards)).mean()
