"""All-reduce aggregation (``cluster.aggregation: allreduce``) for many workers on several nodes.

With the default aggregation every worker sends its share's flat gradient to
the driver, which adds them up: for a 10M-parameter model that is 40 MB per
worker into one process every step. Here the workers form a torch.distributed
process group (gloo on CPU, nccl on GPU) and sum their gradients in a ring
among themselves; only rank 0 returns the sum, so the driver receives one
gradient whatever the number of workers. The parameters take the same way out:
the driver sends them to rank 0 alone, and the group spreads them with an
all-reduce against zeros, a ring in which every link carries about two copies
whatever the group's size (gloo's broadcast would send rank 0's copy to each
rank in turn). The driver's link then carries one copy of the parameters and
one of the gradient per step, not one of each per worker: from 4 workers on
several nodes this pays at every model size (benchmarks/README.md).

torch.distributed rather than ``ray.util.collective``: Ray's gloo backend is
this same torch.distributed group, and its nccl backend needs CuPy, a second
CUDA stack beside the NCCL that torch already ships.

A group needs every member, and one that lost a member cannot be formed again
in place (every survivor's process group is broken for good). So a step that
fails, through a lost worker or by taking over ``share_timeout_s``, is computed
again, with the same tasks, by new workers in a new group: slower to recover
than the driver path's per-share re-dispatch, with the same result. Evaluation
is unchanged (the driver's per-call dispatch).
"""

import time
import warnings
from datetime import timedelta

import numpy as np
import ray
import torch
import torch.distributed as dist
from ray.exceptions import GetTimeoutError, RayError

from cluster.driver import Driver, broadcast, split
from cluster.worker import MetaWorker
from meta_core.flat import Layout, numel


@ray.remote
class AllreduceWorker(MetaWorker.__ray_actor_class__):
    """A MetaWorker that is also one rank of a torch.distributed process group."""

    def host_group(self, world_size: int, timeout_s: float) -> tuple[str, int]:
        """As rank 0: start the group's rendezvous store on a port the OS picks; where the other ranks find it."""
        address = ray.util.get_node_ip_address()
        self.store = dist.TCPStore(address, 0, world_size, is_master=True, timeout=timedelta(seconds=timeout_s), wait_for_workers=False)
        return address, self.store.port

    def join(self, host: tuple[str, int], world_size: int, rank: int, timeout_s: float) -> None:
        """Join the group hosted at ``host`` as ``rank``; its collectives give up after ``timeout_s``."""
        timeout = timedelta(seconds=timeout_s)
        store = self.store if rank == 0 else dist.TCPStore(*host, world_size, is_master=False, timeout=timeout)
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
        self.rank = rank

    def reduced_gradient(self, flat: np.ndarray | bytes | None, step: int, indices: list[int]) -> tuple[np.ndarray | None, dict[str, float]]:
        """The group's summed meta-gradient (float32, rank 0 only; None elsewhere), and this share's summed metrics.
        Only rank 0 gets the parameters (``flat``, None elsewhere); summed with the others' zeros, they reach every rank."""
        params = self.params(flat) if self.rank == 0 else torch.zeros(numel(self.layout), device=self.device)
        dist.all_reduce(params)
        total, sums = self.share(params, step, indices)
        summed = total.float()  # on the worker's device: nccl sums it GPU to GPU
        dist.all_reduce(summed)
        return (summed.cpu().numpy() if self.rank == 0 else None), sums


class AllreduceDriver(Driver):
    """A Driver whose workers sum the meta-gradient among themselves."""

    def __init__(self, config: dict, splits: dict[str, np.ndarray], layout: Layout, worker_cls=AllreduceWorker):
        super().__init__(config, splits, layout, worker_cls=worker_cls)
        self.form_group()

    def form_group(self) -> None:
        """Every worker, ranked in worker order, in a new process group hosted by the first."""
        size = len(self.workers)
        host = ray.get(self.workers[0].host_group.remote(size, self.timeout), timeout=self.timeout)
        ray.get([w.join.remote(host, size, rank, self.timeout) for rank, w in enumerate(self.workers)], timeout=self.timeout)

    def gradient(self, flat: np.ndarray, step: int) -> tuple[np.ndarray, dict[str, float]]:
        """As ``Driver.gradient``; a failed step is computed again by new workers in a new group (once)."""
        try:
            return self.reduced(flat, step)
        except RayError as error:
            warnings.warn(f"step {step}: the all-reduce group failed ({type(error).__name__}); computing it again with new workers")
            self.shutdown()
            self.start_workers()
            self.form_group()
            return self.reduced(flat, step)

    def reduced(self, flat: np.ndarray, step: int) -> tuple[np.ndarray, dict[str, float]]:
        """One try of the step by the current group; raises the first error or a timeout."""
        params_ref = broadcast(flat)
        shares = split(self.meta_batch, len(self.workers))
        sent = [params_ref] + [None] * (len(self.workers) - 1)  # rank 0 spreads them to the group
        refs = [w.reduced_gradient.remote(p, step, idx) for w, p, idx in zip(self.workers, sent, shares)]
        pending, deadline = refs, time.monotonic() + self.timeout
        while pending:  # a lost member's error at once, not after the others' collective gives up on it
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise GetTimeoutError(f"the group's step took over share_timeout_s ({self.timeout}s)")
            ray.get(ready)
        results = ray.get(refs)
        return results[0][0].astype(np.float64) / self.meta_batch, self.mean_metrics([metrics for _, metrics in results])


def make_driver(config: dict, splits: dict[str, np.ndarray], layout: Layout) -> Driver:
    """The driver that ``cluster.aggregation`` names."""
    if config["cluster"]["aggregation"] == "allreduce":
        return AllreduceDriver(config, splits, layout)
    return Driver(config, splits, layout)
