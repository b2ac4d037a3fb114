"""The same run ends with the same bits on any number of workers, on either aggregation path, after a resume, and
after a lost worker's micro-batches were computed again: final parameters compared with ``torch.equal``, and every
step's metrics with ``==``, after 100 to 200 Adam steps (which amplify any difference in the last bit).

A meta-batch of 7 tasks in micro-batches of 2 (2, 2, 2 and 1 tasks, each stacked for vmap) is spread over 2 or 3
workers unevenly, so each worker's part changes with the number of workers; and every few steps the worker with the
first micro-batch answers last, so results arrive out of order."""

import functools
import time

import numpy as np
import pytest
import torch

from cluster.allreduce import AllreduceDriver, AllreduceWorker
from cluster.driver import Driver
from cluster.worker import MetaWorker
from pipelines.build import worker_setup
from pipelines.config import Config, ConfigError, load
from pipelines.stages.train import Checkpoint, State
from tests.cluster_helpers import session, splits, start
from tests.test_cluster_faults import FAULT_STEP, killed_mid_step

SHARED = ["train.meta_batch=7", "train.micro_batch=2", "train.optimizer=adam", "train.compile=false", "train.pre_adapt_every=5"]
SINUSOID = ["train.steps=60", "train.outer_lr=0.01"]
CONV = ["train.steps=30", "train.vectorize=true", "model.width=4", "task.ways=3", "task.queries=2", "data.rotations=false"]

LATE_EVERY, LATE_S = 10, 0.05  # every 10th step (1, 11, ...), the first micro-batch's result comes 50 ms late


def late(step: int) -> bool:
    return step % LATE_EVERY == 1


class FirstLate(MetaWorker):
    """Answers late when it holds the meta-batch's first micro-batch, on a ``late`` step: the other workers'
    micro-batches arrive first."""

    def micro_batch_gradients(self, flat, step, micro_batches):
        result = super().micro_batch_gradients(flat, step, micro_batches)
        if late(step) and micro_batches[0][0] == 0:
            time.sleep(LATE_S)
        return result


class FirstRankLate(AllreduceWorker):
    """Rank 0 (the first micro-batches) answers a call holding a ``late`` step late: the other ranks' metrics arrive first."""

    def train_steps(self, state, first, count, runs):
        result = super().train_steps(state, first, count, runs)
        if self.rank == 0 and any(late(step) for step in range(first, first + count)):
            time.sleep(LATE_S)
        return result


def train(cfg: Config, worker_cls=None, steps: range | None = None, state: State | None = None) -> tuple[torch.Tensor, torch.optim.Optimizer, list]:
    """Meta-steps ``steps`` (all of ``train.steps``) from ``state`` (a checkpoint's; None: from the initial
    parameters) on ``cluster.aggregation``'s driver; the parameters, the optimizer and every step's metrics."""
    driver_cls, late_cls = (AllreduceDriver, FirstRankLate) if cfg.cluster.aggregation == "allreduce" else (Driver, FirstLate)
    steps, per_call, metrics = steps or range(cfg.train.steps), cfg.cluster.steps_per_call, []
    with session(cfg, worker_cls or late_cls, driver_cls) as trained:
        if state is not None:
            trained.load(state.flat)
            trained.optimizer.load_state_dict(state.optimizer)
        for first in range(steps.start, steps.stop, per_call):
            metrics += trained.steps(first, min(per_call, steps.stop - first))
    return trained.flat.detach(), trained.optimizer, metrics


@functools.cache
def alone(overrides: tuple[str, ...]) -> tuple[torch.Tensor, list]:
    """The run on one worker (the driver path): what every other run must end with, bit for bit."""
    flat, _, metrics = train(load(None, [*overrides, "cluster.workers=1"]))
    return flat, metrics


def assert_same_run(overrides: tuple[str, ...], flat: torch.Tensor, metrics: list) -> None:
    expected, expected_metrics = alone(overrides)
    assert not torch.equal(expected, start(load(None, list(overrides)))[2])  # it trained
    assert torch.equal(flat, expected)
    assert metrics == expected_metrics


@pytest.fixture(scope="module")
def conv(omniglot, tmp_path_factory) -> tuple[str, ...]:
    """A small conv net on generated Omniglot-shaped images, vmap-ed over each micro-batch."""
    cache = tmp_path_factory.mktemp("cache")
    return ("data.name=omniglot", *omniglot.overrides(), f"data.cache_dir={cache}", *SHARED, *CONV)


@pytest.mark.parametrize("workers, aggregation, per_call", [(2, "driver", 1), (3, "allreduce", 50)])  # 3 on the driver path: the killed worker's test
def test_sinusoid_ends_with_the_same_bits_on_any_number_of_workers_and_either_aggregation(ray_local, workers, aggregation, per_call):
    overrides = ("data.name=sinusoid", *SHARED, *SINUSOID)
    cfg = load(None, [*overrides, f"cluster.workers={workers}", f"cluster.aggregation={aggregation}", f"cluster.steps_per_call={per_call}"])
    flat, _, metrics = train(cfg)
    assert_same_run(overrides, flat, metrics)


@pytest.mark.parametrize("workers, aggregation", [(2, "driver"), (3, "allreduce")])
def test_conv_net_ends_with_the_same_bits_on_any_number_of_workers_and_either_aggregation(ray_local, conv, workers, aggregation):
    flat, _, metrics = train(load(None, [*conv, f"cluster.workers={workers}", f"cluster.aggregation={aggregation}"]))
    assert_same_run(conv, flat, metrics)


def test_a_run_interrupted_and_resumed_from_its_checkpoint_ends_with_the_same_bits(ray_local, tmp_path):
    overrides = ("data.name=sinusoid", *SHARED, *SINUSOID)
    cfg = load(None, [*overrides, "cluster.workers=2"])
    half = cfg.train.steps // 2 + 1  # not a multiple of pre_adapt_every: the resumed part starts between two pre-adaptation steps
    flat, optimizer, before = train(cfg, steps=range(half))
    saved = Checkpoint(tmp_path / "run.pt", stage_key="k")
    saved.save(State(flat, optimizer.state_dict(), half))
    state = saved.load()
    flat, _, after = train(cfg, steps=range(state.step, cfg.train.steps), state=state)
    assert_same_run(overrides, flat, before + after)


def test_a_worker_killed_mid_step_ends_the_run_with_the_same_bits(ray_local, tmp_path):
    overrides = ("data.name=sinusoid", *SHARED, *SINUSOID)
    marker = tmp_path / "killed"
    killed = killed_mid_step(marker)
    flat, _, metrics = train(load(None, [*overrides, "cluster.workers=3"]), type("KilledOrLate", (killed, FirstLate), {}))
    assert marker.exists(), f"no worker was killed at step {FAULT_STEP}"
    assert_same_run(overrides, flat, metrics)


def test_the_float64_mean_gradient_is_the_same_whatever_arrives_first(ray_local):
    """Below the outer step's float32: the driver's float64 sum itself, at steps where the first micro-batch comes last."""
    overrides = ["data.name=sinusoid", *SHARED, *SINUSOID]
    gradients = {}
    for workers in (1, 3):
        cfg = load(None, [*overrides, f"cluster.workers={workers}"])
        _, layout, flat, _ = start(cfg)
        driver = Driver(worker_setup(cfg), cfg.cluster, splits(cfg), layout, FirstLate)
        try:
            gradients[workers] = [driver.mean_gradient(flat.numpy(), step) for step in range(1, 4 * LATE_EVERY, LATE_EVERY)]
        finally:
            driver.shutdown()
    for (gradient, metrics), (alone_gradient, alone_metrics) in zip(gradients[3], gradients[1], strict=True):
        assert np.array_equal(gradient, alone_gradient) and metrics == alone_metrics


NON_ASSOCIATIVE = (2.0**54, 2.0**54, 2.0**54, 5.0)  # one per micro-batch, float32 values: float64 adds them up to another figure in any other order


class NonAssociative(FirstLate):
    """A micro-batch of one task sums to its ``NON_ASSOCIATIVE`` value in every entry, and in its metric; the first
    micro-batch's result comes last on ``late`` steps."""

    def micro_batch_gradient(self, params, step, indices):
        value = NON_ASSOCIATIVE[indices[0]]
        return torch.full((params.numel(),), value, dtype=torch.float64, device=params.device), {"meta_loss": value}


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_micro_batches_are_added_in_index_order_not_in_the_order_they_arrive(ray_local, workers):
    """Gradients whose float64 sum differs with the order of addition: only micro-batch index order gives it."""
    a, b, c, d = NON_ASSOCIATIVE
    in_order = ((a + b) + c) + d
    assert in_order not in {((c + d) + a) + b, ((d + c) + a) + b, (a + b) + (c + d)}  # arrival orders, and two partial sums
    cfg = load("sinusoid", ["train.meta_batch=4", "train.micro_batch=1", f"cluster.workers={workers}"])
    _, layout, flat, _ = start(cfg)
    driver = Driver(worker_setup(cfg), cfg.cluster, splits(cfg), layout, NonAssociative)
    try:
        gradient, metrics = driver.mean_gradient(flat.numpy(), step=1)  # a ``late`` step: the first micro-batch comes last
    finally:
        driver.shutdown()
    assert np.all(gradient == in_order / 4) and metrics == {"meta_loss": in_order / 4}


def test_micro_batches_do_not_depend_on_the_number_of_workers():
    """What makes the runs above comparable: 7 tasks as micro-batches of 2, 2, 2 and 1 whatever ``cluster.workers``,
    and ``auto`` as the whole meta-batch for vmap-ed tasks, one task for tasks run one by one."""
    setups = [worker_setup(load("sinusoid", [*SHARED, f"cluster.workers={n}"])) for n in (1, 2, 3)]
    assert [s.micro_batch for s in setups] == [2, 2, 2]
    assert worker_setup(load("sinusoid", ["train.micro_batch=auto", "cluster.workers=3"])).micro_batch == 25
    assert worker_setup(load("sinusoid", ["train.micro_batch=auto", "train.vectorize=false"])).micro_batch == 1


def test_micro_batches_are_consecutive_and_the_last_takes_the_rest():
    from cluster.pool import micro_batches

    assert micro_batches(7, 2) == [[0, 1], [2, 3], [4, 5], [6]]
    assert micro_batches(4, 8) == [[0, 1, 2, 3]]
    assert np.concatenate(micro_batches(25, 4)).tolist() == list(range(25))


@pytest.mark.parametrize("value", [0, -2, 1.5, "all"])
def test_a_micro_batch_that_is_not_a_positive_count_or_auto_is_refused(value):
    with pytest.raises(ConfigError, match=rf"'train.micro_batch': expected a positive integer or 'auto', got {value!r}"):
        load("sinusoid", [f"train.micro_batch={value}"])
