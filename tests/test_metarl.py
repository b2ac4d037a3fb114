"""Meta-RL on 2D point navigation: the environment, reproducible rollouts, and MAML against joint training."""

import numpy as np
import pytest
import torch

from meta_core.models import flatten, layout_of
from meta_core.registry import ALGORITHMS, MODELS
from meta_core.rl import MAX_STEP, PointGoals, advantages, rollout
from meta_core.step import evaluate_tasks, micro_batch_gradient
from meta_core.tasks import TEST, task_rng
from tests.test_families import one_thread  # noqa: F401  (autouse: tiny models on one thread)


def policy_learner(inner_steps: int):
    algo = ALGORITHMS["maml_rl"].make(MODELS["policy"].make((2,), 2, width=32), "rl", inner_steps=inner_steps, inner_lr=0.1)
    return algo, algo.initial_params(0)


def test_a_rollout_moves_by_clipped_actions_and_is_rewarded_minus_the_distance_to_the_goal():
    algo, params = policy_learner(1)
    task = PointGoals(rollouts=3, horizon=5, rounds=1).sample(task_rng(0, 0, 0, 0))
    batch = rollout(algo.model, params, task.goal, task.noise[0])
    steps = batch.actions.clamp(-MAX_STEP, MAX_STEP)
    positions = steps.cumsum(1)
    torch.testing.assert_close(batch.states[:, 1:], positions[:, :-1])
    assert (batch.states[:, 0] == 0).all()
    torch.testing.assert_close(batch.rewards, -(positions - task.goal).norm(dim=-1))
    assert (task.goal.abs() <= 0.5).all() and batch.actions.abs().max() > MAX_STEP  # some actions are clipped


def test_a_task_draw_fixes_its_rollouts_and_meta_gradient():
    algo, params = policy_learner(1)
    source = PointGoals(rollouts=4, horizon=8, rounds=2)
    first, again, other = (algo.task_gradient(params, source.sample(task_rng(0, 0, 3, i))) for i in (0, 0, 1))
    for k in params:
        assert torch.equal(first[0][k], again[0][k])
    assert any(not torch.allclose(first[0][k], other[0][k]) for k in params)
    assert first[1]["meta_loss"] > 0  # minus a return made of negative rewards


def test_advantages_are_centred_per_time_step_with_unit_scale():
    rewards = torch.from_numpy(np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32))
    adv = advantages(rewards)
    torch.testing.assert_close(adv.mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(adv.pow(2).mean(), torch.tensor(1.0), atol=1e-4, rtol=0)


def trained(inner_steps: int, rollouts: int, steps: int = 100, meta_batch: int = 10):
    algo, params = policy_learner(inner_steps)
    layout, flat = layout_of(params), flatten(params).clone()
    optimizer = torch.optim.Adam([flat], lr=0.01)
    source = PointGoals(rollouts, horizon=20, rounds=inner_steps + 1)
    for step in range(steps):
        grad, _ = micro_batch_gradient(algo, source, flat, layout, 0, step, range(meta_batch), vectorize=True)
        flat.grad = (grad / meta_batch).float()
        optimizer.step()
    return algo, layout, flat


@pytest.mark.slow
def test_meta_learned_policy_adapts_to_new_goals_in_one_step_better_than_a_jointly_trained_one():
    """Same meta-steps and goals; the joint policy gets MAML's pre- plus post-adaptation rollouts per goal."""
    results = {}
    for name, inner, rollouts in (("maml", 1, 10), ("joint", 0, 20)):
        algo, layout, flat = trained(inner, rollouts)
        per_task = evaluate_tasks(algo, PointGoals(10, 20, 2), flat, layout, 0, TEST, range(40), [1])
        results[name] = {k: float(v.mean()) for k, v in per_task.items()}
    assert results["maml"]["steps1_loss"] < 0.8 * results["joint"]["steps1_loss"], results
    assert results["maml"]["steps1_loss"] < results["maml"]["steps0_loss"], results  # the one step is what helps
