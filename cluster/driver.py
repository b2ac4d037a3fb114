"""The drivers of a meta-step, behind one protocol, and the factory that picks one by ``cluster.aggregation``.

``Driver`` (``cluster.aggregation: driver``) sends the parameters to its workers
each step, gathers each micro-batch's meta-gradient and takes the outer step
here; ``cluster.allreduce.AllreduceDriver`` leaves the sum and the outer step to
the workers. Both cut the meta-batch into the same micro-batches and add them up
in the same order (``cluster.pool``), so both end with the same bits.
"""

import functools
import os
import signal
import threading
from typing import Protocol

import numpy as np
import ray
import torch

from cluster.allreduce import AllreduceDriver
from cluster.config import ClusterConfig, WorkerSetup
from cluster.pool import SPREAD, WorkerPool, batch_metrics, broadcast, mean_gradient, mean_metrics, micro_batches, split
from cluster.worker import MetaWorker, Source, from_wire, to_wire
from meta_core.algorithms import Algorithm
from meta_core.models import Layout


class MetaDriver(Protocol):
    """What the train stage and evaluation call on a driver, whichever aggregation it uses."""

    def steps(self, flat: torch.Tensor, optimizer: torch.optim.Optimizer, first: int, count: int) -> list[dict[str, float]]:
        """Meta-steps ``first`` to ``first + count - 1`` on ``flat`` and ``optimizer``, in place; each step's mean metrics."""

    def evaluate_split(self, flat: np.ndarray, split_name: str, tasks: int, steps: list[int]) -> dict[str, np.ndarray]:
        """Per-task evaluation metrics for tasks ``0..tasks-1`` of the split ``split_name``."""

    def shutdown(self) -> None: ...


def connect(address: str | None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``), or start a local Ray.

    A local Ray gets no dashboard and no client server, so it opens no HTTP or
    client port, and keeps token auth on (Ray's default for a local start;
    nothing here turns it off).
    """
    if ray.is_initialized():
        return
    on_sigterm = signal.getsignal(signal.SIGTERM)  # ray.init replaces it with a handler that exits at once
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:  # "local": a fresh Ray of our own, even if a `ray start` cluster runs on this machine
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)  # the caller's own stands (the CLI stops as on Ctrl-C)


class Driver:
    """Owns the workers; turns parameters and a step number into the meta-batch's mean meta-gradient, and takes the
    outer step in this process."""

    def __init__(
        self,
        setup: WorkerSetup,
        cluster: ClusterConfig,
        splits: dict[str, Source],
        layout: Layout,
        worker_cls: type | None = None,
        scheduling=SPREAD,
    ):
        """``worker_cls``: what its workers are, if not MetaWorkers (a subclass, in tests); ``scheduling`` places them."""
        self.meta_batch, self.micro_batches = setup.outer.meta_batch, micro_batches(setup.outer.meta_batch, setup.micro_batch)
        self.outer_steps = setup.outer.steps_per_batch
        # a learner that takes the outer step itself (Algorithm.outer_update) is a driver_step one: only it is built here
        self.learner = setup.learner.build() if setup.learner.algorithm.driver_step else None
        self.own_step = self.learner is not None and type(self.learner).outer_update is not Algorithm.outer_update
        self.pool = WorkerPool(worker_cls or MetaWorker, setup, cluster, splits, layout, scheduling)

    @property
    def workers(self) -> list[ray.actor.ActorHandle]:
        return self.pool.workers

    def mean_gradient(self, flat: np.ndarray, step: int, behaviour: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, float]]:
        """Mean meta-gradient (float64) over the meta-batch of ``step``, and mean metrics: each worker computes a
        contiguous run of micro-batches, and their sums are added in micro-batch index order. ``behaviour``: the
        parameters the step's episodes are sampled with, where they are not ``flat`` (``Algorithm.sample``)."""
        params = broadcast(flat)
        behaviour_args = () if behaviour is None else (broadcast(behaviour),)
        runs = [[self.micro_batches[k] for k in run] for run in split(len(self.micro_batches), len(self.workers))]
        results = self.pool.run("micro_batch_gradients", [(params, step, run, *behaviour_args) for run in runs])
        gradients = (g for (wire, _), run in zip(results, runs, strict=True) for g in from_wire(wire).reshape(len(run), -1))
        return mean_gradient(gradients, self.meta_batch), mean_metrics((m for _, metrics in results for m in metrics), self.meta_batch)

    def mean_query(self, flat: np.ndarray, step: int, behaviour: np.ndarray, name: str, vector: np.ndarray) -> np.ndarray:
        """The meta-batch's mean of the learner's ``task_query`` at ``flat``, on the step's episodes sampled with
        ``behaviour``, added up as ``mean_gradient`` adds gradients."""
        params, kept, wire = broadcast(flat.astype(np.float32)), broadcast(behaviour), to_wire(vector.astype(np.float32))
        runs = [[self.micro_batches[k] for k in run] for run in split(len(self.micro_batches), len(self.workers))]
        results = self.pool.run("query", [(params, step, run, kept, name, wire) for run in runs])
        return mean_gradient((row for wire, run in zip(results, runs, strict=True) for row in from_wire(wire).reshape(len(run), -1)), self.meta_batch)

    def steps(self, flat: torch.Tensor, optimizer: torch.optim.Optimizer, first: int, count: int) -> list[dict[str, float]]:
        """Meta-steps ``first`` to ``first + count - 1`` on ``flat`` and ``optimizer``, in place; each step's mean metrics.

        Here each step is ``outer_steps`` rounds of calls, each the meta-batch's mean meta-gradient, then the outer
        step in this process: the optimizer's on ``flat.grad``, or the learner's own (``Algorithm.outer_update``),
        which asks the workers more of their tasks (``mean_query``). Every round and query of a step reads the
        episodes sampled with the parameters the step started from (its behaviour parameters), which each worker keeps.
        """
        metrics = []
        for step in range(first, first + count):
            behaviour = flat.detach().numpy().copy() if self.outer_steps > 1 or self.own_step else None
            rounds = []
            for _ in range(self.outer_steps):
                grad, round_metrics = self.mean_gradient(flat.detach().numpy(), step, behaviour)
                if self.own_step:
                    query = functools.partial(self.mean_query, step=step, behaviour=behaviour)
                    new, step_metrics = self.learner.outer_update(
                        flat.detach().numpy(), grad, lambda name, at, v, query=query: query(at, name=name, vector=v)
                    )
                    with torch.no_grad():
                        flat.copy_(torch.from_numpy(np.asarray(new, np.float32)))
                    round_metrics.update(step_metrics)
                else:
                    flat.grad = torch.from_numpy(grad.astype(np.float32))
                    optimizer.step()
                rounds.append(round_metrics)
            metrics.append(batch_metrics(rounds))
        return metrics

    def evaluate_split(self, flat: np.ndarray, split_name: str, tasks: int, steps: list[int]) -> dict[str, np.ndarray]:
        return self.pool.evaluate_split(flat, split_name, tasks, steps)

    def shutdown(self) -> None:
        self.pool.shutdown()


def make_driver(setup: WorkerSetup, cluster: ClusterConfig, splits: dict[str, Source], layout: Layout, scheduling=SPREAD) -> MetaDriver:
    """The driver that ``cluster.aggregation`` names, its workers placed by ``scheduling``."""
    return (AllreduceDriver if cluster.aggregation == "allreduce" else Driver)(setup, cluster, splits, layout, scheduling=scheduling)
