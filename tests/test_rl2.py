"""RL2: PPO's clipped surrogate of a whole trial against its written-out gradient, the recurrent state carried over a
trial's episodes and started afresh for every task, and the same bits from 1 and 2 workers."""

import numpy as np
import pytest
import torch
from torch import nn

from meta_core.algorithms.base import answer
from meta_core.models import flatten
from pipelines.build import build_learner, task_source
from pipelines.config import load
from tests.cluster_helpers import config, train
from tests.test_families import one_thread  # noqa: F401  (autouse: tiny models on one thread)
from tests.test_metarl import served_episodes

TINY = ["algorithm.name=rl2", "model.name=recurrent_policy", "model.width=6", "task.shots=2", "task.horizon=4", "algorithm.inner_steps=2"]


def tiny():
    cfg = load("pointnav", TINY)
    algo = build_learner(cfg)
    return cfg, algo, algo.initial_params(0), task_source(cfg)


def draw(source, cfg, index: int):
    from meta_core.tasks import TRAIN, task_rng

    return source.sample(task_rng(cfg.seed, TRAIN, 0, index))


def reference_means(params, observations, actions, rewards, horizon: int) -> torch.Tensor:
    """The trial's action means from PyTorch's own GRU cell, its inputs assembled step by step (every step taken)."""
    cell = nn.GRUCell(observations.shape[-1] + actions.shape[-1] + 2, params["recurrent.weight"].shape[1])
    weights = {
        "weight_ih": params["input.weight"], "bias_ih": params["input.bias"],
        "weight_hh": params["recurrent.weight"], "bias_hh": params["recurrent.bias"],
    }  # fmt: skip
    trials, steps = observations.shape[:2]
    hidden, means = torch.zeros(trials, cell.hidden_size), []
    for t in range(steps):
        previous_action = actions[:, t - 1] if t > 0 else torch.zeros_like(actions[:, 0])
        previous_reward = rewards[:, t - 1 : t] if t > 0 else torch.zeros(trials, 1)
        flag = torch.full((trials, 1), 1.0 if t > 0 and t % horizon == 0 else 0.0)
        x = torch.cat([observations[:, t], previous_action, previous_reward, flag], -1)
        hidden = torch.func.functional_call(cell, weights, (x, hidden))
        means.append(hidden @ params["head.weight"].T + params["head.bias"])
    return torch.stack(means, 1)


def test_ppo_clipped_surrogates_gradient_matches_its_written_out_form():
    """At parameters away from the sampler's, some ratios clip: the gradient is minus the mean over steps of
    ``A r grad log pi`` over the steps whose ratio is not clipped on the side its advantage pushes."""
    cfg, algo, params, source = tiny()
    (batch,), _ = algo.sample(params, [draw(source, cfg, 0)])
    moved = {k: v + 0.3 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) for k, v in params.items()}
    gradient, metrics = algo.task_gradient(moved, batch)

    leaves = {k: v.clone().requires_grad_() for k, v in moved.items()}
    mean = reference_means(leaves, batch.observations, batch.actions, batch.rewards, cfg.task.horizon)
    log_density = torch.distributions.Normal(mean, leaves["log_std"].exp()).log_prob(batch.actions).sum(-1)
    old = torch.distributions.Normal(batch.mean, batch.log_std.exp()).log_prob(batch.actions).sum(-1)
    ratio, adv, eps = (log_density - old).exp().detach(), batch.advantages, algo.clip_eps
    clipped = ((adv > 0) & (ratio > 1 + eps)) | ((adv < 0) & (ratio < 1 - eps))
    assert 0 < int(clipped.sum()) < clipped.numel()  # both kinds of step occur
    weights = torch.where(clipped, 0.0, adv * ratio) / adv.numel()
    expected = torch.autograd.grad(-(weights * log_density).sum(), list(leaves.values()))
    for (name, got), want in zip(gradient.items(), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)
    per_episode = batch.rewards.view(2, 3, 4).sum(-1).mean(0)
    assert metrics["return_pre"] == pytest.approx(float(per_episode[0])) and metrics["return_post"] == pytest.approx(float(per_episode[2]))


def test_the_hidden_state_carries_over_a_trials_episodes_and_starts_afresh_for_every_task():
    cfg, algo, params, source = tiny()
    tasks = [draw(source, cfg, i) for i in range(2)]
    together, _ = algo.sample(params, tasks)
    alone = [algo.sample(params, [task])[0][0] for task in tasks]
    for joint, single in zip(together, alone, strict=True):  # no state flows from one task to the next in a batch
        torch.testing.assert_close(joint.actions, single.actions, rtol=1e-5, atol=1e-6)
    batch = together[1]
    # The sampler's means along the whole trial are the recurrence run over all its episodes from a zero state ...
    means = reference_means(params, batch.observations, batch.actions, batch.rewards, cfg.task.horizon)
    torch.testing.assert_close(batch.mean, means, rtol=1e-5, atol=1e-6)
    # ... and the last episode's differ from that episode read from a zero state: the state carried over.
    last = slice(8, 12)
    fresh = reference_means(params, batch.observations[:, last], batch.actions[:, last], batch.rewards[:, last], cfg.task.horizon)
    assert (batch.mean[:, last] - fresh).abs().max() > 1e-3
    # Served: after n recorded episodes the answer is the next episode's first mean, as the sampler's.
    steps = torch.cat([batch.observations[0], batch.actions[0]], -1).view(3, 4, -1)
    for n in range(3):
        served = answer(algo, params, steps, batch.rewards[0].view(3, 4), batch.observations[0, 4 * n : 4 * n + 1], n)
        torch.testing.assert_close(served, batch.mean[0, 4 * n : 4 * n + 1], rtol=1e-5, atol=1e-6)
    # Evaluated: the state after n episodes runs the trial's episode n.
    evaluated = algo.evaluate_task(params, tasks[1], [1, 2])
    returns = batch.rewards.view(2, 3, 4).sum(-1).mean(0)
    assert [float(evaluated[f"steps{n}_return"]) for n in range(3)] == pytest.approx(returns.tolist(), rel=1e-5)


RL2 = ("train.steps=1", *TINY, "algorithm.outer_steps=2", "train.micro_batch=2")


def test_rl2_on_one_and_two_workers_gives_the_same_bits(ray_local):
    one = train(config("cluster.workers=1", *RL2, name="pointnav"))
    two = train(config("cluster.workers=2", *RL2, name="pointnav"))
    np.testing.assert_array_equal(two, one)
    cfg = config(*RL2, name="pointnav")
    assert np.abs(two - flatten(build_learner(cfg).initial_params(cfg.seed)).numpy()).max() > 1e-4  # it trained


def test_a_served_rl2_policy_reads_a_requests_episodes_through_its_recurrent_state(tmp_path):
    from pipelines.serving import bad_request

    cfg, algo, params, _ = tiny()
    model, (observations, actions, rewards, queries), frame = served_episodes(tmp_path, cfg, params, 4)
    trial = [torch.from_numpy(x).float().reshape(1, 8, -1) for x in (observations, actions, rewards[..., None])]
    for n in (0, 1, 2):
        served = np.stack(model.predict(None, frame, {"adapt_steps": n})["action"])
        # the episodes read, then each query as the first step of the next episode
        per_query = [
            reference_means(params, torch.cat([trial[0][:, : 4 * n], torch.from_numpy(q).view(1, 1, 2)], 1),
                            torch.cat([trial[1][:, : 4 * n], torch.zeros(1, 1, 2)], 1), trial[2][:, : 4 * n + 1, 0], 4)[0, -1]
            for q in queries
        ]  # fmt: skip
        np.testing.assert_allclose(served, torch.stack(per_query).detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(type(bad_request("")), match="adapt_steps: 3 episodes asked for, the request holds 2"):
        model.predict(None, frame, {"adapt_steps": 3})
