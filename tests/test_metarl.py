"""Meta-RL: the task environments' rewards, reproducible episodes, the baseline and advantages, the inner objectives'
meta-gradients against their written-out maths, and ProMP's several outer steps per batch on the cluster."""

import os
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from cluster.pool import micro_batches
from cluster.worker import MetaWorker
from meta_core.algorithms.maml_rl import MAMLRL
from meta_core.algorithms.maml_trpo import MAMLTRPO
from meta_core.algorithms.promp import ProMP
from meta_core.envs import CTRL_COST, HalfCheetahDirection, HalfCheetahVelocity, PointNavigation
from meta_core.models import flatten, forward, layout_of, unflatten
from meta_core.registry import ALGORITHMS
from meta_core.rl import advantages, discounted_sums, fitted_baseline, run_episodes, stacked
from meta_core.step import micro_batch_gradient, micro_batch_query
from meta_core.tasks import task_rng
from meta_core.trust_region import conjugate_gradient, trust_region_step
from pipelines.build import build_learner, task_source
from tests.cluster_helpers import config, start, train
from tests.test_families import one_thread  # noqa: F401  (autouse: tiny models on one thread)


def test_point_navigation_moves_by_clipped_actions_is_rewarded_minus_the_distance_and_stops_at_the_goal():
    family = PointNavigation(episodes=2, horizon=3, rounds=1)
    goals = np.array([[0.3, -0.2], [0.05, 0.0]])
    assert (family.reset(goals, np.zeros(2)) == 0).all()
    position, reward, done = family.step(np.array([[0.5, -0.05], [0.055, 0.005]]))
    np.testing.assert_allclose(position, [[0.1, -0.05], [0.055, 0.005]])  # the first action clipped to 0.1
    np.testing.assert_allclose(reward, [-np.hypot(0.2, 0.15), -np.hypot(0.005, 0.005)])
    assert done.tolist() == [False, True]  # within 0.01 of the goal in each coordinate
    goals = np.stack([family.goal(task_rng(0, 0, 0, i)) for i in range(200)])
    assert (np.abs(goals) <= 0.5).all() and goals.min() < -0.4 and goals.max() > 0.4


@pytest.mark.parametrize("family_cls", [HalfCheetahVelocity, HalfCheetahDirection])
def test_half_cheetah_rewards_follow_their_formulas_from_the_simulator_state(family_cls):
    family = family_cls(episodes=2, horizon=5, rounds=1)
    goals = np.stack([family.goal(task_rng(0, 0, 0, i)) for i in range(2)]).astype(np.float64)
    family.reset(goals, np.array([1, 2]))
    rng = np.random.default_rng(0)
    for _ in range(5):
        actions = rng.normal(0, 1.0, size=(2, 6))  # some beyond [-1, 1]: the simulator receives them clipped
        data = [env.unwrapped.data for env in family.active]
        before = np.array([d.qpos[0] for d in data])
        _, reward, done = family.step(actions)
        dt = family.active[0].unwrapped.model.opt.timestep * 5  # HalfCheetah-v5's frame skip
        velocity = (np.array([d.qpos[0] for d in data]) - before) / dt
        control = CTRL_COST * (np.clip(actions, -1, 1) ** 2).sum(-1)
        g = goals[:, 0]
        expected = -np.abs(velocity - g) - control if family_cls is HalfCheetahVelocity else g * velocity - control
        np.testing.assert_allclose(reward, expected, rtol=1e-10)
        assert not done.any()
    np.testing.assert_allclose([d.ctrl for d in data], np.clip(actions, -1, 1))
    many = np.array([family.goal(task_rng(0, 0, 0, i))[0] for i in range(200)])
    if family_cls is HalfCheetahVelocity:
        assert many.min() >= 0 and many.max() <= 2 and many.min() < 0.1 and many.max() > 1.9
    else:
        assert set(many) == {-1.0, 1.0}


class LinearPolicy(nn.Module):
    """mean = W s + b, with a learned log standard deviation: small enough to write its derivatives out."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(2, 2)
        self.log_std = nn.Parameter(torch.full((2,), -0.5))

    def forward(self, x):
        return self.head(x)


def test_a_task_key_fixes_its_episodes():
    policy = LinearPolicy()
    params = {k: v.detach() for k, v in policy.named_parameters()}
    family = PointNavigation(episodes=3, horizon=6, rounds=1)
    first, again, other = ([family.sample(task_rng(0, 0, 4, i))] for i in (0, 0, 1))
    runs = [run_episodes(policy, stacked(params, 1), tasks, 0)[0] for tasks in (first, again, other)]
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not torch.equal(runs[0].observations, runs[2].observations)


def test_advantages_are_gae_over_the_fitted_baseline_normalised_over_the_steps_taken():
    rng = np.random.default_rng(0)
    rewards, observations = rng.normal(size=(4, 7)), rng.normal(size=(4, 7, 3))
    mask = np.ones((4, 7))
    mask[1, 5:] = 0  # an episode that ended early
    rewards = rewards * mask
    baseline = fitted_baseline(observations, discounted_sums(rewards, 0.9), mask)
    for lam in (1.0, 0.0):
        adv = advantages(rewards, observations, mask, 0.9, lam)
        raw = np.zeros_like(rewards)
        for e in range(4):  # a plain loop over each episode's steps
            steps = int(mask[e].sum())
            for t in range(steps):
                if lam == 1.0:  # GAE(1): the discounted return less the baseline
                    raw[e, t] = sum(0.9**k * rewards[e, t + k] for k in range(steps - t)) - baseline[e, t]
                else:  # GAE(0): the one-step TD error
                    raw[e, t] = rewards[e, t] + 0.9 * (baseline[e, t + 1] if t + 1 < steps else 0.0) - baseline[e, t]
        taken = raw[mask > 0]
        np.testing.assert_allclose(adv[mask > 0], (taken - taken.mean()) / taken.std(), rtol=1e-6, atol=1e-8)
        assert (adv[mask == 0] == 0).all()


def in_order(params) -> torch.Tensor:
    """W (row-major), b, log_std, in float64: the order the written-out derivatives take."""
    return torch.cat([params["head.weight"].reshape(-1), params["head.bias"], params["log_std"]]).double()


def written_out_meta_gradient(params, samples, inner_lr: float, curvature: str) -> np.ndarray:
    """The meta-gradient of one inner step for the linear Gaussian policy, from its closed-form derivatives, in
    float64: ``(I + lr H) g_post``. ``H`` is the Hessian of the inner objective at the sampling parameters: the LVC
    objective's ``mean((grad log pi grad log pi^T + grad^2 log pi) A)``, or the REINFORCE surrogate's
    ``mean(grad^2 log pi A)``; ``g_post`` the policy gradient of the adapted policy's episodes."""

    def derivatives(theta, s, a):
        """log pi's gradient and Hessian w.r.t. (W row-major, b, log_std), per step."""
        W, b, ls = theta[:4].reshape(2, 2), theta[4:6], theta[6:8]
        sigma = np.exp(ls)
        u = np.concatenate([s, np.ones((*s.shape[:-1], 1))], -1)  # (n, 3): [s, 1] multiplies [W | b]
        z = (a - (s @ W.T + b)) / sigma
        n = len(s)
        g_wb = (z / sigma)[:, :, None] * u[:, None, :]  # (n, d, k)
        grad = np.concatenate([g_wb[:, :, :2].reshape(n, 4), g_wb[:, :, 2], z**2 - 1], 1)
        index_wb = lambda d, k: 2 * d + k if k < 2 else 4 + d  # noqa: E731
        hess = np.zeros((n, 8, 8))
        for d in range(2):
            for k in range(3):
                for k2 in range(3):
                    hess[:, index_wb(d, k), index_wb(d, k2)] = -u[:, k] * u[:, k2] / sigma[d] ** 2
                hess[:, index_wb(d, k), 6 + d] = hess[:, 6 + d, index_wb(d, k)] = -2 * z[:, d] * u[:, k] / sigma[d]
            hess[:, 6 + d, 6 + d] = -2 * z[:, d] ** 2
        return grad, hess

    def steps(n):
        taken = samples.mask[n].numpy().reshape(-1) > 0
        pick = lambda x: x[n].double().numpy().reshape(-1, *x.shape[3:])[taken]  # noqa: E731
        return pick(samples.observations), pick(samples.actions), pick(samples.advantages)

    theta = in_order(params).numpy()
    s, a, adv = steps(0)
    grad, hess = derivatives(theta, s, a)
    g_inner = (grad * adv[:, None]).mean(0)
    curvature_terms = hess if curvature == "reinforce" else hess + grad[:, :, None] * grad[:, None, :]
    H = (curvature_terms * adv[:, None, None]).mean(0)
    s1, a1, adv1 = steps(1)
    grad1, _ = derivatives(theta + inner_lr * g_inner, s1, a1)
    g_post = -(grad1 * adv1[:, None]).mean(0)
    return (np.eye(8) + inner_lr * H) @ g_post


@pytest.mark.parametrize("algorithm, curvature", [(ProMP, "lvc"), (MAMLRL, "reinforce")])
def test_inner_objectives_meta_gradient_matches_its_written_out_maths(algorithm, curvature):
    policy = LinearPolicy()
    algo = algorithm(policy, "rl", inner_lr=0.3, inner_steps=1)
    torch.manual_seed(0)
    params = {k: v.detach() + 0.3 * torch.randn_like(v) for k, v in policy.named_parameters()}
    tasks = [PointNavigation(episodes=6, horizon=10, rounds=2).sample(task_rng(0, 0, 1, 0))]
    (samples,), _ = algo.sample(params, tasks)
    grads, metrics = algo.task_gradient(params, samples)
    expected = written_out_meta_gradient(params, samples, 0.3, curvature)
    np.testing.assert_allclose(in_order(grads).numpy(), expected, rtol=2e-4, atol=2e-6)
    other = written_out_meta_gradient(params, samples, 0.3, "reinforce" if curvature == "lvc" else "lvc")
    assert np.abs(other - expected).max() > 1e-2 * np.abs(expected).max()  # the two curvatures differ here
    assert metrics["return_post"] - metrics["return_pre"] == metrics["adaptation_delta"]


PROMP = ("train.steps=2", "algorithm.name=promp", "algorithm.outer_steps=2", "task.shots=3", "task.horizon=8", "model.width=8", "train.micro_batch=2")
FAULT_STEP = 1


def one_process(cfg) -> np.ndarray:
    """ProMP's outer loop in this process: ``outer_steps`` SGD steps on each step's batch, sampled at its start."""
    algo, layout, flat, optimizer = start(cfg)
    source = task_source(cfg)
    for step in range(cfg.train.steps):
        behaviour = flat.detach().clone()
        for _ in range(cfg.algorithm.options["outer_steps"]):
            total, _ = micro_batch_gradient(
                algo, source, flat.detach(), layout, cfg.seed, step, range(cfg.train.meta_batch), False, behaviour=behaviour
            )
            flat.grad = (total / cfg.train.meta_batch).float()
            optimizer.step()
    return flat.detach().numpy().copy()


def killed_in_a_later_outer_step(marker: Path):
    class KilledInALaterOuterStep(MetaWorker):
        """Kills its own process in its first share of FAULT_STEP's second outer step: its replacement has not
        sampled the step's episodes, and must sample them again from the behaviour parameters."""

        def micro_batch_gradients(self, flat, step, micro_batches, behaviour=None):
            later = behaviour is not None and not np.array_equal(np.frombuffer(flat, np.float32), np.frombuffer(behaviour, np.float32))
            if step == FAULT_STEP and later and not marker.exists():
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
            return super().micro_batch_gradients(flat, step, micro_batches, behaviour)

    return KilledInALaterOuterStep


def test_promp_outer_steps_on_workers_match_one_process_and_survive_a_killed_worker(ray_local, tmp_path):
    """Sums of float32 micro-batch rows against one float64 sum: close; with a worker killed or not: the same bits."""
    expected = one_process(config(*PROMP, name="pointnav"))
    two = train(config("cluster.workers=2", *PROMP, name="pointnav"))
    np.testing.assert_allclose(two, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(two - start(config(*PROMP, name="pointnav"))[2].numpy()).max() > 1e-3  # it trained
    marker = tmp_path / "killed"
    faulty = train(config("cluster.workers=2", *PROMP, name="pointnav"), killed_in_a_later_outer_step(marker))
    assert marker.exists(), "the fault was never injected"
    np.testing.assert_array_equal(faulty, two)


def served_episodes(tmp_path, config, params, horizon: int):
    """The learner registered as served, and a request of two random episodes of ``horizon`` transitions (observation
    and action in ``x``, reward in ``y``) with three query observations: the model, the episodes and the request."""
    from pipelines.artifacts import Trained
    from pipelines.serving import TRAINED, FewShotModel, request

    Trained("run", config, params).write(tmp_path)
    model = FewShotModel()
    model.load_context(SimpleNamespace(artifacts={TRAINED: str(tmp_path)}, model_config={}))
    rng = np.random.default_rng(0)
    observations, actions, rewards = rng.normal(size=(2, horizon, 2)), rng.normal(size=(2, horizon, 2)), -rng.random((2, horizon))
    queries = rng.normal(size=(3, 2)).astype(np.float32)
    frame = request(np.concatenate([observations, actions], -1).reshape(2 * horizon, 4), rewards.reshape(2 * horizon), queries)
    return model, (observations, actions, rewards, queries), frame


def test_a_served_policy_adapts_to_a_requests_transitions_by_a_policy_gradient_step(tmp_path):
    from pipelines.config import load
    from pipelines.serving import bad_request

    config = load("pointnav", ["task.horizon=5", "model.width=8"])
    algo = build_learner(config)
    params = algo.initial_params(0)
    model, (observations, actions, rewards, queries), frame = served_episodes(tmp_path, config, params, 5)
    steps0, steps1 = (np.stack(model.predict(None, frame, {"adapt_steps": n})["action"]) for n in (0, 1))
    q = torch.from_numpy(queries)
    np.testing.assert_allclose(steps0, forward(algo.model, params, q).numpy(), rtol=1e-6, atol=1e-6)
    # one step up the REINFORCE policy gradient of the recorded episodes, with per-task normalised GAE advantages
    adv = torch.from_numpy(advantages(rewards, observations, np.ones((2, 5)), 0.99, 1.0)).float()
    obs, act = torch.from_numpy(observations).float(), torch.from_numpy(actions).float()
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    mean, std = forward(algo.model, leaves, obs), leaves["log_std"].exp()
    log_density = torch.distributions.Normal(mean, std).log_prob(act).sum(-1)
    gradient = torch.autograd.grad((log_density * adv).mean(), list(leaves.values()))
    adapted = {k: v + 0.1 * g for (k, v), g in zip(params.items(), gradient, strict=True)}
    np.testing.assert_allclose(steps1, forward(algo.model, adapted, q).detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(type(bad_request("")), match="whole episodes of 5 support rows"):
        model.predict(None, frame.drop(index=0), {"adapt_steps": 1})


def test_the_trust_region_step_solves_for_the_natural_gradient_and_backtracks_into_the_region():
    rng = np.random.default_rng(0)
    root = rng.normal(size=(5, 5))
    fisher, gradient, flat = root @ root.T + np.eye(5), rng.normal(size=5), rng.normal(size=5)
    np.testing.assert_allclose(conjugate_gradient(lambda v: fisher @ v, gradient, 5), np.linalg.solve(fisher, gradient), rtol=1e-6)
    natural = np.linalg.solve(fisher, gradient)
    full = natural * np.sqrt(2 * 0.01 / (natural @ fisher @ natural))  # where the quadratic KL model reaches max_kl

    def surrogate(x):  # a linear loss along the gradient; a KL that is the quadratic model, doubled
        d = x - flat
        return float(gradient @ d), float(d @ fisher @ d)

    new, found = trust_region_step(flat, gradient, lambda v: fisher @ v, surrogate, 0.01, 5, 0.0, 0.5, 10)
    np.testing.assert_allclose(new, flat - 0.5 * full, rtol=1e-6)  # the full step's KL is 0.02: one halving fits
    assert found["line_search_steps"] == 2 and found["kl"] <= 0.01
    unchanged, _ = trust_region_step(flat, gradient, lambda v: fisher @ v, lambda x: (1.0, 0.0), 0.01, 5, 0.0, 0.5, 3)
    np.testing.assert_array_equal(unchanged, flat)  # no candidate improves the loss: the step is not taken


def test_maml_trpo_fisher_product_is_the_hessian_of_the_kl_after_adaptation():
    policy = LinearPolicy()
    algo = MAMLTRPO(policy, "rl", inner_lr=0.3, inner_steps=1)
    params = {k: v.detach() for k, v in policy.named_parameters()}
    (samples,), _ = algo.sample(params, [PointNavigation(episodes=4, horizon=6, rounds=2).sample(task_rng(0, 0, 2, 0))])
    layout = layout_of(params)
    kl = lambda flat: algo.kl(unflatten(flat, layout), samples)  # noqa: E731
    hessian = torch.autograd.functional.hessian(kl, flatten(params))
    vector = torch.from_numpy(np.random.default_rng(1).normal(size=hessian.shape[0]))
    product = algo.task_query("fisher_product", params, samples, vector)
    torch.testing.assert_close(product.float(), hessian @ vector.float(), rtol=1e-4, atol=1e-6)
    assert float(kl(flatten(params))) < 1e-6  # at the sampling parameters the adapted policy is the sampler


TRPO = ("train.steps=2", "algorithm.name=maml_trpo", "algorithm.cg_iters=3", "task.shots=3", "task.horizon=8", "model.width=8", "train.micro_batch=2")


def test_maml_trpo_trust_region_steps_on_workers_match_one_process(ray_local):
    """The reference adds float32 micro-batch sums in float64 and sends vectors in float32, as the driver does:
    conjugate gradient amplifies any other rounding."""
    cfg = config("cluster.workers=2", *TRPO, name="pointnav")
    algo, layout, flat, _ = start(cfg)
    source, cache, meta_batch = task_source(cfg), {}, cfg.train.meta_batch
    parts = micro_batches(meta_batch, cfg.train.micro_batch)
    flat = flat.detach()
    for step in range(cfg.train.steps):
        behaviour = flat.clone()

        def query(name, at, vector, step=step, behaviour=behaviour):
            at, vector = torch.from_numpy(np.asarray(at, np.float32)), torch.from_numpy(vector.astype(np.float32)).double()
            rows = [micro_batch_query(algo, source, at, layout, cfg.seed, step, part, name, vector, behaviour, cache).float() for part in parts]
            return sum(row.double() for row in rows).numpy() / meta_batch

        rows = [
            micro_batch_gradient(algo, source, flat, layout, cfg.seed, step, part, False, behaviour=behaviour, cache=cache)[0].float()
            for part in parts
        ]
        new, found = algo.outer_update(flat.numpy(), sum(row.double() for row in rows).numpy() / meta_batch, query)
        assert found["line_search_steps"] < algo.ls_max_steps  # a step was taken
        flat = torch.from_numpy(np.asarray(new, np.float32))
    np.testing.assert_allclose(train(cfg), flat.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, algorithm", [("halfcheetah_dir", "promp"), ("halfcheetah_dir_trpo", "maml_trpo")])
def test_allreduce_refuses_learners_whose_outer_steps_the_driver_coordinates(name, algorithm):
    from pipelines.config import ConfigError, load

    with pytest.raises(ConfigError, match=f"'cluster.aggregation': allreduce .* algorithm '{algorithm}' needs cluster.aggregation: driver"):
        load(name, ["cluster.aggregation=allreduce"])
    assert load("pointnav", ["cluster.aggregation=allreduce"]).algorithm.name == "maml_rl"  # one optimizer step a batch: allowed


def test_evaluation_reports_returns_per_adaptation_step_and_each_tasks_adaptation_delta():
    from pipelines.stages.evaluate import evaluate

    rng = np.random.default_rng(0)
    before, after = rng.normal(-40, 5, size=30), rng.normal(-15, 5, size=30)
    per_task = {"steps0_return": before, "steps0_loss": -before, "steps1_return": after, "steps1_loss": -after}
    config = SimpleNamespace(
        algorithm=SimpleNamespace(inner_steps=1), algorithm_spec=ALGORITHMS["maml_rl"], eval=SimpleNamespace(steps=(1,), tasks=30)
    )
    session = SimpleNamespace(config=config, evaluate_split=lambda split, tasks, steps: per_task)
    metrics, table = evaluate(session)
    delta = after - before
    assert metrics["eval_adaptation_delta"] == pytest.approx(delta.mean())
    assert metrics["eval_adaptation_delta_ci95"] == pytest.approx(1.96 * delta.std(ddof=1) / np.sqrt(30))
    assert metrics["eval_post_adapt_return"] == pytest.approx(after.mean()) and list(table["return"]) == pytest.approx([before.mean(), after.mean()])
