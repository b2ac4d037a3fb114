"""Faults on one node: a worker killed mid-step, and a straggler, on both aggregation paths. Training must end where
training in one process, with no faults and no workers, ends."""

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from cluster.allreduce import AllreduceDriver, AllreduceWorker
from cluster.worker import MetaWorker
from tests.cluster_helpers import config, reference, train

FAULT_STEP = 2
SPREAD = "train.micro_batch=2"  # every worker gets some of the meta-batch's micro-batches


def once(marker: Path) -> bool:
    """True for exactly one caller across all worker processes: whoever creates ``marker`` first."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def killed_mid_step(marker: Path):
    class KilledMidStep(MetaWorker):
        """Kills its own process (SIGKILL, no clean-up) inside the first share of step FAULT_STEP it gets."""

        def micro_batch_gradients(self, flat, step, micro_batches):
            if step == FAULT_STEP and once(marker):
                os.kill(os.getpid(), signal.SIGKILL)
            return super().micro_batch_gradients(flat, step, micro_batches)

    return KilledMidStep


def straggling(marker: Path, delay_s: float):
    class Straggler(MetaWorker):
        """Takes ``delay_s`` over the first share of step FAULT_STEP it gets."""

        def micro_batch_gradients(self, flat, step, micro_batches):
            if step == FAULT_STEP and once(marker):
                time.sleep(delay_s)
            return super().micro_batch_gradients(flat, step, micro_batches)

    return Straggler


def test_worker_killed_mid_step_is_replaced_and_parameters_match(ray_local, tmp_path):
    marker = tmp_path / "killed"
    for workers in (1, 2):  # alone, the share waits for the restarted actor; with two, it moves to the live one
        marker.unlink(missing_ok=True)
        cfg = config(f"cluster.workers={workers}", SPREAD)
        expected = reference(cfg)
        faulty = train(cfg, killed_mid_step(marker))
        assert marker.exists(), "the fault was never injected"
        np.testing.assert_allclose(faulty, expected, rtol=1e-5, atol=1e-6)


def test_straggler_share_is_redispatched_after_the_timeout(ray_local, tmp_path):
    delay_s = 300  # far beyond the timeout, so finishing well before it shows the share was not waited for, on a loaded machine too
    cfg = config("cluster.workers=2", "cluster.share_timeout_s=3", SPREAD)
    expected = reference(cfg)
    started = time.monotonic()
    slow = train(cfg, straggling(tmp_path / "slow", delay_s))
    assert (tmp_path / "slow").exists(), "the straggler never stalled"
    assert time.monotonic() - started < delay_s / 2
    np.testing.assert_allclose(slow, expected, rtol=1e-5, atol=1e-6)


STALL_S = 300  # a stalled rank: far beyond the timeout, so a run that waited for it would show


def faulty_in_group(marker: Path, fault: str):
    class FaultyInGroup(AllreduceWorker):
        """Kills its own process, or stalls for STALL_S, inside the first micro-batch of step FAULT_STEP it gets:
        before the group sums that step's gradients, after it took the steps before (in the same call, at 2 a call)."""

        def micro_batch_gradient(self, params, step, indices):
            if step == FAULT_STEP and once(marker):
                os.kill(os.getpid(), signal.SIGKILL) if fault == "killed" else time.sleep(STALL_S)
            return super().micro_batch_gradient(params, step, indices)

    return FaultyInGroup


@pytest.mark.parametrize(
    "fault, seen_as, per_call",
    [("killed", "ActorDiedError|RayTaskError", 1), ("straggling", "GetTimeoutError", 1), ("killed", "ActorDiedError|RayTaskError", 2)],
)
def test_allreduce_call_that_fails_is_computed_again_by_a_new_group_and_parameters_match(ray_local, tmp_path, fault, seen_as, per_call):
    cfg = config("cluster.workers=2", "cluster.aggregation=allreduce", "cluster.share_timeout_s=5", f"cluster.steps_per_call={per_call}", SPREAD)
    expected = reference(cfg)
    started = time.monotonic()
    # a lost worker is seen at once (its own death, or its peer's broken connection), a stalled one at the timeout
    with pytest.warns(UserWarning, match=rf"step 2: the all-reduce group failed \(({seen_as})"):
        faulty = train(cfg, faulty_in_group(tmp_path / fault, fault), driver_cls=AllreduceDriver)
    assert (tmp_path / fault).exists(), "the fault was never injected"
    assert time.monotonic() - started < STALL_S / 2
    np.testing.assert_allclose(faulty, expected, rtol=1e-5, atol=1e-6)


class FailsToStart(MetaWorker):
    """A worker whose constructor raises, as a worker built from a broken setup would."""

    def __init__(self, *args):
        raise ValueError("broken setup")


def test_a_worker_that_cannot_start_stops_the_run_at_once_instead_of_being_replaced(ray_local):
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="a worker failed while starting: ValueError: broken setup$"):
        train(config("cluster.workers=2"), FailsToStart)
    assert time.monotonic() - started < 60  # not share_timeout_s attempts at replacing it
