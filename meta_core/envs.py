"""Meta-RL task families: each draws a task (its goal, and every episode's reset seed and exploration noise) from the
task's own generator, and steps many episodes of many tasks as one batch of environments.

A task is then a pure function of ``(seed, stream, step, index)`` (``meta_core.tasks.task_rng``), and so is every
episode of it that a given policy runs: a lost share of a meta-batch is resampled identically on another worker.
"""

from typing import NamedTuple

import numpy as np
import torch

CTRL_COST = 0.05  # the anchors' control cost, 0.5 * 0.1 |a|^2 (ProMP, MAML's rllab environments)


class EnvTask(NamedTuple):
    """One task: its family (which steps it), its goal, and for every round of episodes (one per adaptation step, and
    one after) each episode's reset seed and its standard normal exploration noise."""

    family: "Family"
    goal: torch.Tensor  # (goal_size,): a goal position, a target velocity, a direction
    seeds: torch.Tensor  # (rounds, episodes), int64
    noise: torch.Tensor  # (rounds, episodes, horizon, action)

    def to(self, device) -> "EnvTask":
        return EnvTask(self.family, *(t.to(device, non_blocking=True) for t in self[1:]))


class Family:
    """A distribution of tasks, with ``episodes`` episodes of ``horizon`` steps per round and ``rounds`` rounds."""

    observation: int
    action: int

    def __init__(self, episodes: int, horizon: int, rounds: int):
        self.episodes, self.horizon, self.rounds = episodes, horizon, rounds

    def goal(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def sample(self, rng: np.random.Generator) -> EnvTask:
        goal = np.asarray(self.goal(rng), dtype=np.float32).reshape(-1)
        seeds = rng.integers(0, 2**31 - 1, size=(self.rounds, self.episodes), dtype=np.int64)
        noise = rng.standard_normal((self.rounds, self.episodes, self.horizon, self.action), dtype=np.float32)
        return EnvTask(self, torch.from_numpy(goal), torch.from_numpy(seeds), torch.from_numpy(noise))

    def reset(self, goals: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """Start one episode per row of ``goals`` (float64), each from its seed; their first observations."""
        raise NotImplementedError

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every episode started by ``reset`` takes its action: observations, rewards and whether it reached its end."""
        raise NotImplementedError


class PointNavigation(Family):
    """2D navigation as in the MAML paper (section 5.3, ``cbfinn/maml_rl``'s ``PointEnvRandGoal``): goals uniform in
    [-0.5, 0.5]^2, the agent starts at the origin and moves by its action clipped to [-0.1, 0.1] per coordinate, is
    rewarded minus its distance to the goal after the move, and is done within 0.01 of the goal in each coordinate."""

    observation, action = 2, 2
    GOAL_RANGE, MAX_STEP, DONE_WITHIN = 0.5, 0.1, 0.01

    def goal(self, rng):
        return rng.uniform(-self.GOAL_RANGE, self.GOAL_RANGE, size=2)

    def reset(self, goals, seeds):
        self.goals, self.position = goals, np.zeros_like(goals)
        return self.position.copy()

    def step(self, actions):
        self.position = self.position + np.clip(actions, -self.MAX_STEP, self.MAX_STEP)
        offset = self.position - self.goals
        done = (np.abs(offset) < self.DONE_WITHIN).all(-1)
        return self.position.copy(), -np.linalg.norm(offset, axis=-1), done


class HalfCheetah(Family):
    """Gymnasium's ``HalfCheetah-v5`` (MuJoCo) with a task's reward in place of its own, from the environment's forward
    velocity ``v`` (its ``x_velocity``: the change of the root's x position over one step's time) and the action
    ``a`` it was given, clipped to the action space's [-1, 1] as the simulator clips it. Never done: episodes end at
    the horizon. Each worker keeps its environments and resets them from each episode's seed."""

    observation, action = 17, 6

    def __init__(self, episodes: int, horizon: int, rounds: int):
        super().__init__(episodes, horizon, rounds)
        self.envs: list = []

    def reward(self, goals: np.ndarray, velocity: np.ndarray, actions: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reset(self, goals, seeds):
        import gymnasium  # only a worker that steps a cheetah needs MuJoCo

        while len(self.envs) < len(goals):
            self.envs.append(gymnasium.make("HalfCheetah-v5").unwrapped)
        self.goals, self.active = goals, self.envs[: len(goals)]
        return np.stack([env.reset(seed=int(seed))[0] for env, seed in zip(self.active, seeds, strict=True)])

    def step(self, actions):
        actions = np.clip(actions, -1.0, 1.0)
        observations, velocity = [], []
        for env, action in zip(self.active, actions, strict=True):
            observation, _, _, _, info = env.step(action)
            observations.append(observation)
            velocity.append(info["x_velocity"])
        return np.stack(observations), self.reward(self.goals, np.array(velocity), actions), np.zeros(len(actions), bool)


class HalfCheetahVelocity(HalfCheetah):
    """Run at a target velocity ``v*`` uniform in [0, 2]: reward ``-|v - v*| - 0.05 |a|^2`` (ProMP's
    ``HalfCheetahRandVelEnv``, MAML's ``HalfCheetahEnvRand``)."""

    def goal(self, rng):
        return rng.uniform(0.0, 2.0, size=1)

    def reward(self, goals, velocity, actions):
        return -np.abs(velocity - goals[:, 0]) - CTRL_COST * (actions**2).sum(-1)


class HalfCheetahDirection(HalfCheetah):
    """Run forward (``d = 1``) or backward (``d = -1``), each with probability 1/2: reward ``d v - 0.05 |a|^2``
    (ProMP's ``HalfCheetahRandDirecEnv``, MAML's ``HalfCheetahEnvRandDirec``)."""

    def goal(self, rng):
        return rng.choice([-1.0, 1.0], size=1)

    def reward(self, goals, velocity, actions):
        return goals[:, 0] * velocity - CTRL_COST * (actions**2).sum(-1)
