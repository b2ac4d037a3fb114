"""The driver's side of a meta-step: broadcast parameters, gather shares, average.

Shares are contiguous slices of the meta-batch's task indices. A share is a pure
function of (parameters, step, indices), so a share lost with its worker, or
stuck on a straggler, is simply computed again elsewhere with the same tasks.

A worker that dies is replaced by the driver, not restarted by Ray: a new actor
built from the same arguments, as a restart would rebuild it. Ray does not
restart actors whose constructor arguments live in the object store reliably
(ray#53727, and it logs an error for every such actor), while the driver holds
the task splits' reference for as long as it runs.
"""

import os
import signal
import threading
import time

import numpy as np
import ray
import torch
from ray.exceptions import ActorDiedError, RayError, RayTaskError

from cluster.config import ClusterConfig, WorkerSetup
from cluster.worker import INLINE_BYTES, MetaWorker, from_wire, to_wire
from meta_core.flat import Layout

MAX_ATTEMPTS = 5  # share timeouts a call may take before the step is given up
STARTUP_S = 600  # for every worker to be placed and built (an autoscaler may be adding nodes)
RETRY_S = 1.0  # how often a failed call is tried again while no worker is healthy
SPREAD = "SPREAD"  # workers over as many nodes as have room: losing one node loses few of them


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


def split(n: int, parts: int) -> list[list[int]]:
    """``range(n)`` as ``parts`` contiguous, near-equal, non-empty slices."""
    return [s.tolist() for s in np.array_split(np.arange(n), min(parts, n))]


def broadcast(flat: np.ndarray) -> bytes | ray.ObjectRef:
    """What each worker's call carries: the parameters in the object store once, shared by every call (and
    zero-copy on every worker of a node), or, when Ray would inline them anyway, inside each call
    (``to_wire``): a small model then skips the object store's round trip every step."""
    return to_wire(flat) if flat.nbytes <= INLINE_BYTES else ray.put(flat)


class Driver:
    """Owns the workers; turns parameters and a step number into the averaged meta-gradient."""

    worker = MetaWorker  # what its workers are, unless ``worker_cls`` names another class (a subclass, in tests)

    def __init__(
        self,
        setup: WorkerSetup,
        cluster: ClusterConfig,
        splits: dict[str, np.ndarray | None],
        layout: Layout,
        worker_cls: type | None = None,
        scheduling=SPREAD,
    ):
        """``scheduling`` places the workers: SPREAD, or a placement group's strategy inside a sweep's trial."""
        self.meta_batch, self.scheduling = setup.outer.meta_batch, scheduling
        self.timeout = cluster.share_timeout_s
        self.splits_ref = ray.put(splits)  # once: every worker on a node maps the same memory; kept for replacements
        self.setup, self.cluster, self.layout = setup, cluster, layout
        self.actor_cls = ray.remote(worker_cls or self.worker)  # a plain class made an actor here: subclasses stay plain
        self.start_workers()

    def new_worker(self) -> ray.actor.ActorHandle:
        """A worker as ``cluster`` sizes it; the driver re-dispatches lost shares itself, to whichever worker is free."""
        options = dict(
            num_cpus=self.cluster.num_cpus,
            num_gpus=self.cluster.num_gpus,
            resources=dict(self.cluster.resources),
            scheduling_strategy=self.scheduling,
            max_task_retries=0,
        )
        return self.actor_cls.options(**options).remote(self.setup, self.splits_ref, self.layout)

    def start_workers(self) -> None:
        """``cluster.workers`` new workers as ``self.workers``, once every one of them is placed and built."""
        self.workers = [self.new_worker() for _ in range(self.cluster.workers)]
        self.probes: dict[ray.ObjectRef, int] = {}  # a ping to each worker that failed or stalled
        started, _ = ray.wait([w.node.remote() for w in self.workers], num_returns=len(self.workers), timeout=STARTUP_S)
        if len(started) < len(self.workers):  # share timeouts start counting only once every worker is up
            self.shutdown()
            raise RuntimeError(
                f"only {len(started)} of cluster.workers={len(self.workers)} workers started within {STARTUP_S}s: "
                f"the cluster lacks num_cpus={self.cluster.num_cpus}, num_gpus={self.cluster.num_gpus}, "
                f"resources={dict(self.cluster.resources)} per worker"
            )
        try:
            ray.get(started)
        except ActorDiedError as e:  # a constructor raised: every replacement would raise the same, so stop here
            self.shutdown()
            raise RuntimeError(f"a worker failed while starting: {str(e).strip().splitlines()[-1]}") from e

    def gradient(self, flat: np.ndarray, step: int) -> tuple[np.ndarray, dict[str, float]]:
        """Mean meta-gradient (float64) over the meta-batch of ``step``, and mean metrics."""
        params_ref = broadcast(flat)
        shares = split(self.meta_batch, len(self.workers))
        results = self.run("meta_gradient", [(params_ref, step, idx) for idx in shares])
        total = np.zeros(flat.size, dtype=np.float64)
        for grad, _ in results:
            total += from_wire(grad)
        return total / self.meta_batch, self.mean_metrics([metrics for _, metrics in results])

    def mean_metrics(self, shares: list[dict[str, float]]) -> dict[str, float]:
        """The shares' summed metrics, added up and divided by the meta-batch."""
        sums: dict[str, float] = {}
        for metrics in shares:
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
        return {k: v / self.meta_batch for k, v in sums.items()}

    def steps(self, flat: torch.Tensor, optimizer: torch.optim.Optimizer, first: int, count: int) -> list[dict[str, float]]:
        """Meta-steps ``first`` to ``first + count - 1`` on ``flat`` and ``optimizer``, in place; each step's mean metrics.

        Here each step is one round of calls: the meta-batch's mean meta-gradient
        into ``flat.grad``, then the outer optimizer's step in this process.
        """
        metrics = []
        for step in range(first, first + count):
            grad, step_metrics = self.gradient(flat.detach().numpy(), step)
            flat.grad = torch.from_numpy(grad.astype(np.float32))
            optimizer.step()
            metrics.append(step_metrics)
        return metrics

    def evaluate(self, flat: np.ndarray, split_name: str, tasks: int, steps: list[int]) -> dict[str, np.ndarray]:
        """Per-task evaluation metrics for tasks ``0..tasks-1`` of the split ``split_name``, spread over the workers."""
        params_ref = broadcast(flat)
        chunks = split(tasks, len(self.workers) * 4)
        results = self.run("evaluate", [(params_ref, split_name, idx, steps) for idx in chunks])
        return {k: np.concatenate([r[k] for r in results]) for k in results[0]}

    def run(self, method: str, calls: list[tuple]) -> list:
        """Run each call on some worker and return results in call order.

        A call whose worker died is sent to another worker (or, with none
        healthy, retried every RETRY_S until its worker is back); one still
        running after ``share_timeout_s`` is sent to another worker too, and
        the first result back wins. A call is given up after MAX_ATTEMPTS
        times ``share_timeout_s`` without a result.
        """
        results, done = [None] * len(calls), [False] * len(calls)
        pending: dict[ray.ObjectRef, tuple[int, int]] = {}  # ref -> (call, worker)
        first, started, tried = [0.0] * len(calls), [0.0] * len(calls), [[] for _ in calls]
        failed: dict[int, float] = {}  # call -> when its latest attempt failed

        def dispatch(i: int) -> None:
            healthy, load = self.healthy(), [0] * len(self.workers)
            for _, w in pending.values():
                load[w] += 1
            w = min(range(len(self.workers)), key=lambda w: (w not in healthy, w in tried[i], load[w], (w - i) % len(self.workers)))
            pending[getattr(self.workers[w], method).remote(*calls[i])] = (i, w)
            started[i], first[i] = time.monotonic(), first[i] or time.monotonic()
            tried[i].append(w)
            failed.pop(i, None)

        for i in range(len(calls)):
            dispatch(i)
        try:
            while not all(done):
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=RETRY_S) if pending else (time.sleep(RETRY_S) or [], [])
                for ref in ready:
                    i, w = pending.pop(ref)
                    if done[i]:
                        continue
                    try:
                        results[i], done[i] = ray.get(ref), True
                    except RayTaskError:
                        raise  # a bug in the computation, not a lost worker: retrying would fail the same way
                    except RayError:
                        self.suspect(w)
                        failed[i] = time.monotonic()
                now, healthy = time.monotonic(), self.healthy()
                for i in range(len(calls)):
                    if not done[i] and now - first[i] > MAX_ATTEMPTS * self.timeout:
                        raise TimeoutError(f"{method}: call {i} has no result after {MAX_ATTEMPTS} x share_timeout_s ({self.timeout}s)")
                for i, at in list(failed.items()):
                    if not done[i] and (healthy or now - at > RETRY_S):
                        dispatch(i)
                for i, w in list(pending.values()):
                    if not done[i] and i not in failed and now - started[i] > self.timeout:
                        self.suspect(w)
                        dispatch(i)
        finally:
            for ref in pending:
                ray.cancel(ref)  # duplicates still queued on a straggler: drop them rather than compute them
        return results

    def suspect(self, w: int) -> None:
        """Send worker ``w`` a ping; it counts as healthy again once it answers (replaced, or done with its backlog)."""
        if w not in self.probes.values():
            self.probes[self.workers[w].node.remote()] = w

    def healthy(self) -> set[int]:
        """Workers with no unanswered ping."""
        if self.probes:
            answered, _ = ray.wait(list(self.probes), num_returns=len(self.probes), timeout=0)
            for ref in answered:
                w = self.probes.pop(ref)
                try:
                    ray.get(ref)
                except ActorDiedError:  # gone for good: a new worker takes its place, healthy once it answers
                    self.workers[w] = self.new_worker()
                    self.suspect(w)
                except RayError:
                    self.suspect(w)  # not reachable for now: ask again
        return set(range(len(self.workers))) - set(self.probes.values())

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
