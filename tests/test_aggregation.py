"""Every aggregation path computes the meta-batch's mean meta-gradient: checked against one process summing the same
tasks, with a meta-batch that no number of workers splits evenly, and plain SGD, so that a wrong divisor or a mean
of the shares' means cannot pass."""

import numpy as np
import pytest

from cluster.allreduce import AllreduceDriver, AllreduceWorker
from cluster.driver import Driver
from cluster.pool import split
from pipelines.build import worker_setup
from tests.cluster_helpers import config, mean_gradient, reference, start, summed_gradient, train

WORKERS = 3
SPREAD = "train.micro_batch=2"  # 7 tasks as micro-batches of 2, 2, 2 and 1: over 3 workers, 4, 2 and 1 tasks


def test_seven_tasks_over_three_workers_tell_the_mean_from_a_mean_of_the_shares_means():
    """What makes the checks below able to fail: with shares of 3, 2 and 2 tasks, averaging each share's mean
    gives another gradient than the meta-batch's mean (with equal shares the two would be the same)."""
    cfg = config()
    _, layout, flat, _ = start(cfg)
    shares = split(7, WORKERS)
    assert [len(share) for share in shares] == [3, 2, 2]
    mean_of_means = np.mean([summed_gradient(cfg, flat, layout, 0, share).numpy() / len(share) for share in shares], axis=0)
    whole = mean_gradient(cfg, flat, layout, 0).numpy()
    assert not np.allclose(mean_of_means, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("workers", [1, WORKERS])
def test_driver_gradient_is_the_single_process_mean_over_the_meta_batch(ray_local, workers):
    cfg = config(f"cluster.workers={workers}", SPREAD)
    _, layout, flat, _ = start(cfg)
    driver = Driver(worker_setup(cfg), cfg.cluster, {"train": None, "test": None}, layout)
    try:
        gradients = [driver.mean_gradient(flat.numpy(), step)[0] for step in (0, 1)]
    finally:
        driver.shutdown()
    for step, gradient in enumerate(gradients):
        np.testing.assert_allclose(gradient, mean_gradient(cfg, flat, layout, step).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "aggregation, workers, per_call",
    [("driver", 1, 1), ("driver", WORKERS, 1), ("allreduce", 1, 1), ("allreduce", WORKERS, 1), ("allreduce", WORKERS, 2)],
)
def test_sgd_steps_end_where_a_single_process_ends(ray_local, aggregation, workers, per_call):
    cfg = config(f"cluster.workers={workers}", f"cluster.aggregation={aggregation}", f"cluster.steps_per_call={per_call}", SPREAD)
    distributed = train(cfg, AllreduceWorker, driver_cls=AllreduceDriver) if aggregation == "allreduce" else train(cfg)
    expected = reference(cfg)
    assert not np.allclose(expected, start(cfg)[2].numpy())  # it trained
    np.testing.assert_allclose(distributed, expected, rtol=1e-5, atol=1e-6)
