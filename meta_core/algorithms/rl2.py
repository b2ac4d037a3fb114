"""RL2 (Duan et al. 2016, "RL^2: Fast Reinforcement Learning via Slow Reinforcement Learning") trained with PPO, as in
``jonasrothfuss/ProMP``'s ``full_code`` branch.

A task's trial is ``inner_steps + 1`` episodes of one environment (the task's rounds, one episode of each per trial;
``task.shots`` trials per task), run by a recurrent policy that reads each step's observation with the previous
step's action and reward and a flag marking an episode's first step after the first. Its hidden state carries over
the trial's episodes and starts from zero for every task: there is no inner gradient, and the state adapted after
``n`` episodes is that hidden state. ``task_gradient`` is PPO's clipped surrogate over the whole trial, with GAE
over the trial's steps against a linear baseline, advantages normalised per task, and ``outer_steps`` epochs on
each sampled batch; no entropy bonus (the reference has none).
"""

import time
from typing import NamedTuple

import numpy as np
import torch
from torch.func import functional_call

from meta_core.algorithms.base import Algorithm, Metrics
from meta_core.autodiff import grad
from meta_core.envs import EnvTask
from meta_core.models import Params
from meta_core.registry import AlgorithmSpec, positive_int, positive_number, register_algorithm
from meta_core.rl import DISCOUNT, Batch, Episodes, advantages, gaussian_log_prob, step_mean
from meta_core.tasks import Task


class Trial(NamedTuple):
    """The policy (its weights) and what it reads before its next step, after ``episodes`` episodes: its hidden state
    (trials, hidden), the last action (trials, action) and reward (trials,) it saw, and the return of the episode this
    state then ran (trials,; None for recorded episodes, which have no next one)."""

    weights: Params
    hidden: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    episodes: int
    next_return: torch.Tensor | None


def previous(x: torch.Tensor) -> torch.Tensor:
    """Each step's previous value along the steps' dimension (-2), zero before the first."""
    return torch.cat([torch.zeros_like(x[..., :1, :]), x[..., :-1, :]], dim=-2)


def policy_inputs(observations: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, horizon: int) -> torch.Tensor:
    """Each step's input (..., steps, observation + action + 2) along a trial of episodes of ``horizon`` steps: its
    observation, the previous step's action and reward (zero at the trial's start and after an episode's end), and 1
    at the first step of every episode but the first."""
    steps = torch.arange(observations.shape[-2])
    flag = ((steps % horizon == 0) & (steps > 0)).to(observations.dtype).view(-1, 1).expand(*observations.shape[:-1], 1)
    return torch.cat([observations, previous(actions * mask.unsqueeze(-1)), previous((rewards * mask).unsqueeze(-1)), flag], dim=-1)


def recurrent_means(model, params: Params, inputs: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The action means along ``inputs`` (..., steps, input) from ``hidden``, and the hidden state after the last step."""
    means = []
    for t in range(inputs.shape[-2]):
        mean, hidden = functional_call(model, params, (inputs[..., t, :], hidden))
        means.append(mean)
    return torch.stack(means, dim=-2), hidden


class RL2(Algorithm):
    """Losses are negative mean returns: ``pre_adapt_loss`` of a trial's first episode, ``post_adapt_loss`` of its
    last. ``clip_eps``: PPO's ratio clipping; ``outer_steps``: PPO's epochs on each sampled batch."""

    def __init__(self, model, kind, *, clip_eps: float = 0.2, outer_steps: int = 5, gae_lambda: float = 1.0, **kwargs):
        super().__init__(model, kind, **kwargs)
        self.clip_eps, self.outer_steps, self.gae_lambda = clip_eps, outer_steps, gae_lambda

    def initial_hidden(self, trials: int) -> torch.Tensor:
        return torch.zeros(trials, self.model.hidden)

    def run_trials(self, params: Params, tasks: list[EnvTask], episodes: int) -> tuple[Episodes, list[Trial], dict[str, float]]:
        """Every task's ``task.shots`` trials of ``episodes`` episodes, all stepped as one batch of environments, with
        episode ``k`` from the task's round ``k`` (its seeds and exploration noise); the trials' steps (tasks x
        trials, episodes x horizon, ...) with the states after each count of episodes, and the time taken."""
        family = tasks[0].family
        trials, horizon = len(tasks) * family.episodes, family.horizon
        goals = np.repeat(np.stack([t.goal.numpy() for t in tasks]).astype(np.float64), family.episodes, axis=0)
        std = params["log_std"].exp()
        hidden, action, reward = self.initial_hidden(trials), torch.zeros(trials, family.action), torch.zeros(trials)
        taken, states, returns, env_s, policy_s = torch.ones(trials), [], [], 0.0, 0.0
        steps = Episodes([], [], [], [])
        for k in range(episodes):
            seeds = np.concatenate([t.seeds[k].numpy() for t in tasks])
            noise = torch.cat([t.noise[k] for t in tasks])  # (trials, horizon, action)
            states.append((hidden, action * taken.unsqueeze(-1), reward))
            started = time.perf_counter()
            observation = family.reset(goals, seeds)
            env_s += time.perf_counter() - started
            alive, first = np.ones(trials, bool), torch.full((trials, 1), float(k > 0))
            episode_return = torch.zeros(trials)
            for t in range(horizon):
                started = time.perf_counter()
                obs = torch.from_numpy(observation.astype(np.float32))
                inputs = torch.cat([obs, action * taken.unsqueeze(-1), reward.unsqueeze(-1), first if t == 0 else torch.zeros_like(first)], -1)
                mean, hidden = functional_call(self.model, params, (inputs, hidden))
                action = mean + std * noise[:, t]
                policy_s += time.perf_counter() - started
                started = time.perf_counter()
                observation, step_reward, done = family.step(action.double().numpy())
                env_s += time.perf_counter() - started
                taken = torch.from_numpy(alive.astype(np.float32))
                reward = torch.from_numpy(np.where(alive, step_reward, 0.0).astype(np.float32))
                for record, value in zip(steps, (obs, action, reward, taken), strict=True):
                    record.append(value)
                episode_return += reward
                alive = alive & ~done
            returns.append(episode_return)
        states.append((hidden, action * taken.unsqueeze(-1), reward))
        trial_states = [Trial(params, *states[n], n, returns[n] if n < episodes else None) for n in range(episodes + 1)]
        return Episodes(*(torch.stack(x, 1) for x in steps)), trial_states, {"env_s": env_s, "policy_s": policy_s}

    def processed(self, params: Params, steps: Episodes, horizon: int) -> Batch:
        """One task's trials as PPO reads them: GAE over each whole trial against a linear baseline fitted to the
        task's steps, normalised per task, and the sampling policy's log-densities along the trial."""
        obs, act, rew, mask = steps
        adv = advantages(rew.numpy(), obs.numpy(), mask.numpy(), DISCOUNT, self.gae_lambda)
        mean, _ = recurrent_means(self.model, params, policy_inputs(obs, act, rew, mask, horizon), self.initial_hidden(len(obs)))
        log_std = params["log_std"]
        return Batch(obs, act, rew, mask, torch.from_numpy(adv.astype(np.float32)), gaussian_log_prob(mean, log_std, act), mean, log_std)

    def sample(self, behaviour: Params, tasks: list[EnvTask]) -> tuple[list[Batch], Metrics]:
        """Each task's trials of ``inner_steps + 1`` episodes with the ``behaviour`` parameters, processed; the
        environment steps taken, and the seconds spent sampling, stepping environments and in the policy."""
        started = time.perf_counter()
        family = tasks[0].family
        with torch.no_grad():
            steps, _, times = self.run_trials(behaviour, tasks, self.inner_steps + 1)
            per_task = Episodes(*(x.view(len(tasks), family.episodes, *x.shape[1:]) for x in steps))
            samples = [self.processed(behaviour, Episodes(*(x[i] for x in per_task)), family.horizon) for i in range(len(tasks))]
        metrics = {"env_steps": float(steps.mask.sum()), "sample_s": time.perf_counter() - started, **times}
        return samples, {k: torch.tensor(v, dtype=torch.float64) for k, v in metrics.items()}

    def surrogate(self, params: Params, batch: Batch) -> torch.Tensor:
        """Minus PPO's clipped objective of the trials, against the policy that sampled them."""
        horizon = batch.observations.shape[-2] // (self.inner_steps + 1)
        inputs = policy_inputs(batch.observations, batch.actions, batch.rewards, batch.mask, horizon)
        mean, _ = recurrent_means(self.model, params, inputs, self.initial_hidden(len(inputs)))
        ratio = (gaussian_log_prob(mean, params["log_std"], batch.actions) - batch.log_prob).exp()
        adv = batch.advantages
        return -step_mean(torch.minimum(ratio * adv, ratio.clamp(1 - self.clip_eps, 1 + self.clip_eps) * adv), batch.mask)

    def meta_loss(self, params: Params, batch: Batch):
        horizon = batch.observations.shape[-2] // (self.inner_steps + 1)
        per_episode = batch.rewards.unflatten(-1, (self.inner_steps + 1, horizon)).sum(-1).mean(0)  # (episodes,)
        before, after = per_episode[0], per_episode[-1]
        metrics = {
            "meta_loss": -after, "pre_adapt_loss": -before, "post_adapt_loss": -after,
            "return_pre": before, "return_post": after, "adaptation_delta": after - before,
        }  # fmt: skip
        return self.surrogate(params, batch), metrics

    def task_gradient(self, params: Params, batch: Batch, pre_adapt: bool = True) -> tuple[Params, Metrics]:
        """The gradient of minus PPO's objective on a task's sampled trials (``sample``); the first episode's return
        is in them anyway, so it is always reported."""
        return grad(self.meta_loss, has_aux=True)(params, batch)

    def adaptations(self, params: Params, task: EnvTask | Task, counts: list[int]) -> list[Trial]:
        """The policy's state after each of ``counts`` episodes of a trial: of the task's environment (episode ``n``
        from its round ``n``, and one more, the episode that state runs), or of the recorded episodes of a ``Task``
        (as a served request brings them: ``support_x`` each step's observation and action, ``support_y`` its
        reward), the first ``n`` of them."""
        with torch.no_grad():
            if isinstance(task, EnvTask):
                _, states, _ = self.run_trials(params, [task], max(counts, default=0) + 1)
                return [states[n] for n in counts]
            return [self.read_recorded(params, task, n) for n in counts]

    def read_recorded(self, params: Params, task: Task, count: int) -> Trial:
        x, rewards = task.support_x, task.support_y  # (episodes, horizon, observation + action), (episodes, horizon)
        if count > len(x):
            raise ValueError(f"adapt_steps: {count} episodes asked for, the request holds {len(x)}")
        if count == 0:
            return Trial(params, self.initial_hidden(1), torch.zeros(1, x.shape[-1] - self.input_shape[-1]), torch.zeros(1), 0, None)
        observation, horizon = self.input_shape[-1], x.shape[1]
        trial = x[:count].flatten(0, 1).unsqueeze(0)
        obs, act, rew = trial[..., :observation], trial[..., observation:], rewards[:count].reshape(1, -1)
        _, hidden = recurrent_means(self.model, params, policy_inputs(obs, act, rew, torch.ones_like(rew), horizon), self.initial_hidden(1))
        return Trial(params, hidden, act[:, -1], rew[:, -1], count, None)

    def predict(self, adapted: Trial, query_x: torch.Tensor) -> torch.Tensor:
        """The mean action at each observation ``query_x``, each as the first step of the trial's next episode after
        the adapted state (of its first trial)."""
        n = len(query_x)
        first = torch.full((n, 1), float(adapted.episodes > 0))
        inputs = torch.cat([query_x, adapted.action[:1].expand(n, -1), adapted.reward[:1].expand(n).unsqueeze(-1), first], -1)
        mean, _ = functional_call(self.model, adapted.weights, (inputs, adapted.hidden[:1].expand(n, -1)))
        return mean

    def query_metrics(self, adapted: Trial, task: EnvTask, prefix: str, out=None) -> Metrics:
        """``<prefix>_return``: the mean return of the episode the adapted state runs next; ``<prefix>_loss``: minus it."""
        value = adapted.next_return.mean()
        return {f"{prefix}_loss": -value, f"{prefix}_return": value}


register_algorithm(
    AlgorithmSpec(
        "rl2",
        RL2,
        "RL2: a recurrent policy whose hidden state carries over a task's episodes, trained by PPO on whole trials",
        options=(
            positive_number("gae_lambda", 1.0, "GAE's lambda (1: discounted returns less the baseline)"),
            positive_number("clip_eps", 0.2, "PPO's likelihood ratio clipping range"),
            positive_int("outer_steps", 5, "PPO epochs on each sampled batch (ProMP's RL2 max_epochs)"),
        ),
        kinds=("rl",),
        models=("recurrent_policy",),
        inner_loop=False,
        driver_step=True,
    )
)
