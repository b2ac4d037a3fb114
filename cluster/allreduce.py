"""All-reduce aggregation (``cluster.aggregation: allreduce``) for many workers on several nodes, or many steps a call.

With the default aggregation every worker sends its share's flat gradient to
the driver, which adds them up and takes the outer optimizer's step: for a
10M-parameter model that is 40 MB per worker into one process every step, and
for a tiny one a round trip through Ray every step. Here the
workers form a torch.distributed process group (gloo on CPU, nccl on GPU), as
DistributedDataParallel does: every rank holds the parameters and the outer
optimizer, the ranks gather every micro-batch's gradient and each adds them up
in micro-batch index order (``cluster.pool``; not a ring sum, whose order
would depend on the group's size), so each takes the same optimizer step, and
the same as the driver path's. The driver sends the parameters and optimizer state once (to a
new group, or after it loaded a checkpoint), asks for ``cluster.steps_per_call``
meta-steps at a time, and takes back rank 0's state after them: its link
carries one copy of that state per call whatever the number of workers, and
Ray's round trip is paid once per call.

torch.distributed rather than ``ray.util.collective``: Ray's gloo backend is
this same torch.distributed group, and its nccl backend needs CuPy, a second
CUDA stack beside the NCCL that torch already ships.

A group needs every member, and one that lost a member cannot be formed again
in place (every survivor's process group is broken for good). So a call that
fails, through a lost worker or by taking over ``share_timeout_s`` a step, is
computed again, from the state the driver holds and with the same tasks, by new
workers in a new group: slower to recover than the driver path's per-call
re-dispatch, with the same result. Evaluation is the driver path's
(``WorkerPool.evaluate_split``).
"""

import time
import warnings
from datetime import timedelta

import numpy as np
import ray
import torch
import torch.distributed as dist
from ray.exceptions import GetTimeoutError, RayError

from cluster.config import ClusterConfig, WorkerSetup
from cluster.pool import SPREAD, WorkerPool, mean_gradient, mean_metrics, micro_batches
from cluster.worker import MetaWorker, Source
from meta_core.models import Layout, numel


def pack(flat: torch.Tensor, optimizer: torch.optim.Optimizer) -> dict:
    """Parameters and outer optimizer state, their tensors as numpy arrays: Ray moves those by their buffers, with no
    pickling of the bytes, which for a large model's Adam state costs more than the step."""
    return {"flat": flat.detach().cpu().numpy(), "optimizer": mapped(optimizer.state_dict(), torch.Tensor, lambda t: t.detach().cpu().numpy())}


def unpack(state: dict, flat: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    """``pack``'s state into ``flat`` and ``optimizer``, in place, as fresh tensors: object-store arrays are read-only."""
    tensors = mapped(state, np.ndarray, lambda a: torch.tensor(a, device=flat.device))
    with torch.no_grad():
        flat.copy_(tensors["flat"])
    optimizer.load_state_dict(tensors["optimizer"])


def mapped(tree, kind: type, fn):
    """``tree`` (dicts and lists, as in an optimizer's state dict) with ``fn`` applied to its leaves of type ``kind``."""
    if isinstance(tree, dict):
        return {k: mapped(v, kind, fn) for k, v in tree.items()}
    if isinstance(tree, list):
        return [mapped(v, kind, fn) for v in tree]
    return fn(tree) if isinstance(tree, kind) else tree


class AllreduceWorker(MetaWorker):
    """A MetaWorker that is also one rank of a torch.distributed process group, holding the parameters and the
    outer optimizer between calls."""

    def __init__(self, setup: WorkerSetup, splits: dict[str, Source], layout: Layout):
        super().__init__(setup, splits, layout)
        self.meta_batch = setup.outer.meta_batch
        self.flat = torch.zeros(numel(layout), device=self.device)
        self.optimizer = setup.outer.make_optimizer(self.flat)

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

    def train_steps(
        self, state: dict | None, first: int, count: int, runs: list[list[list[int]]]
    ) -> tuple[dict | None, list[list[dict[str, float]]]]:
        """Meta-steps ``first`` to ``first + count - 1`` from ``state`` (``pack``'s; None: from where the last call
        left off). ``runs[r]`` are rank r's micro-batches; every rank gathers every micro-batch's gradient, adds them
        up in index order and takes the outer optimizer's step alike. Rank 0's state afterwards (None elsewhere),
        and this rank's micro-batches' summed metrics of each step."""
        if state is not None:
            unpack(state, self.flat, self.optimizer)
        metrics = []
        for step in range(first, first + count):
            mine = [self.micro_batch_gradient(self.flat, step, indices) for indices in runs[self.rank]]
            gradients = self.gathered([g for g, _ in mine], [len(run) for run in runs])
            grad = mean_gradient(gradients, self.meta_batch)
            self.flat.grad = torch.from_numpy(grad.astype(np.float32)).to(self.device)  # as the driver path casts it
            self.optimizer.step()
            metrics.append([m for _, m in mine])
        return (pack(self.flat, self.optimizer) if self.rank == 0 else None), metrics

    def gathered(self, mine: list[torch.Tensor], counts: list[int]) -> np.ndarray:
        """Every rank's micro-batch gradients (``counts[r]`` from rank r; ``mine`` from this one), in rank order: in
        micro-batch index order. Each rank's rows are padded to the largest count, as ``all_gather`` needs equal shapes."""
        rows = torch.zeros(max(counts), self.flat.numel(), dtype=torch.float32, device=self.device)
        if mine:
            rows[: len(mine)] = torch.stack(mine).float()  # rounded once, as the driver path's workers send them
        if len(counts) == 1:  # gloo would still take its time with a group of one
            return rows.cpu().numpy()
        every = [torch.empty_like(rows) for _ in counts]
        dist.all_gather(every, rows)
        return torch.cat([ranks_rows[:n] for ranks_rows, n in zip(every, counts, strict=True)]).cpu().numpy()


class AllreduceDriver:
    """Owns workers that gather the meta-gradient among themselves and take the outer step themselves."""

    def __init__(
        self,
        setup: WorkerSetup,
        cluster: ClusterConfig,
        splits: dict[str, Source],
        layout: Layout,
        worker_cls: type | None = None,
        scheduling=SPREAD,
    ):
        """As ``Driver``'s; ``worker_cls``: what its workers are, if not AllreduceWorkers (a subclass, in tests)."""
        self.meta_batch, self.timeout = setup.outer.meta_batch, cluster.share_timeout_s
        self.micro_batches = micro_batches(setup.outer.meta_batch, setup.micro_batch)
        self.pool = WorkerPool(worker_cls or AllreduceWorker, setup, cluster, splits, layout, scheduling)
        self.form_group()

    @property
    def workers(self) -> list[ray.actor.ActorHandle]:
        return self.pool.workers

    def form_group(self) -> None:
        """Every worker, ranked in worker order, in a new process group hosted by the first; it holds no state yet."""
        size = len(self.workers)
        host = ray.get(self.workers[0].host_group.remote(size, self.timeout), timeout=self.timeout)
        ray.get([w.join.remote(host, size, rank, self.timeout) for rank, w in enumerate(self.workers)], timeout=self.timeout)
        self.held: torch.Tensor | None = None  # the parameters the group holds, as last taken back from it

    def steps(self, flat: torch.Tensor, optimizer: torch.optim.Optimizer, first: int, count: int) -> list[dict[str, float]]:
        """As ``Driver.steps``, in one call to each worker; a failed call is computed again by new workers in a new group (once)."""
        try:
            state, metrics = self.group_steps(flat, optimizer, first, count)
        except RayError as error:
            warnings.warn(f"step {first}: the all-reduce group failed ({type(error).__name__}); computing it again with new workers", stacklevel=2)
            self.pool.shutdown()
            self.pool.start()
            self.form_group()
            state, metrics = self.group_steps(flat, optimizer, first, count)
        unpack(state, flat, optimizer)
        self.held = flat.detach().clone()
        return metrics

    def group_steps(self, flat: torch.Tensor, optimizer: torch.optim.Optimizer, first: int, count: int) -> tuple[dict, list[dict[str, float]]]:
        """One try of the steps by the current group, sent ``flat`` and ``optimizer`` unless it holds them already
        (not when new, nor after a checkpoint was loaded); raises the first error or a timeout."""
        sent = None if self.held is not None and torch.equal(self.held, flat) else ray.put(pack(flat, optimizer))
        ranks = [s.tolist() for s in np.array_split(np.arange(len(self.micro_batches)), len(self.workers))]  # some empty, if few
        runs = [[self.micro_batches[k] for k in rank] for rank in ranks]
        refs = [w.train_steps.remote(sent, first, count, runs) for w in self.workers]
        pending, deadline, results = refs, time.monotonic() + count * self.timeout, {}
        while pending:  # a lost member's error at once, not after the others' collective gives up on it
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise GetTimeoutError(f"the group's {count} step(s) took over share_timeout_s ({self.timeout}s) each")
            results[ready[0]] = ray.get(ready[0])
        state, _ = results[refs[0]]
        per_step = zip(*(results[ref][1] for ref in refs), strict=True)  # each step: every rank's micro-batches' metrics
        return state, [mean_metrics((m for rank in step for m in rank), self.meta_batch) for step in per_step]

    def evaluate_split(self, flat: np.ndarray, split_name: str, tasks: int, steps: list[int]) -> dict[str, np.ndarray]:
        return self.pool.evaluate_split(flat, split_name, tasks, steps)

    def shutdown(self) -> None:
        self.pool.shutdown()
