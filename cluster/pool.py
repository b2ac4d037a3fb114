"""The workers both drivers share: started and placed, each call sent to a free worker, a dead worker replaced, a
lost or stuck call sent again.

A call is a pure function of its arguments (a share of a meta-step, or of an
evaluation), so a call lost with its worker, or stuck on a straggler, is simply
computed again elsewhere with the same arguments and gives the same result.

A worker that dies is replaced by the pool, not restarted by Ray: a new actor
built from the same arguments, as a restart would rebuild it. Ray does not
restart actors whose constructor arguments live in the object store reliably
(ray#53727, and it logs an error for every such actor), while the pool holds
the task splits' reference for as long as it runs.

A meta-batch is cut into micro-batches of ``train.micro_batch`` tasks (the last one may be smaller) whatever the
number of workers, and workers get contiguous runs of whole micro-batches. Each micro-batch's meta-gradient is summed
on one worker, in float64, with the same shapes wherever it runs (a vmap-ed micro-batch always stacks the same
tasks), and sent apart, rounded once to float32 (half the bytes, and the same rounding wherever it is done); the
sums are then added in micro-batch index order, in float64, by the driver or alike by every rank of an all-reduce
group. So no sum depends on how many workers there were, which of them computed what, or the order in which their
results arrived.
"""

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from ray.exceptions import ActorDiedError, RayError, RayTaskError

from cluster.config import ClusterConfig, WorkerSetup
from cluster.worker import INLINE_BYTES, Source, to_wire
from meta_core.models import Layout

MAX_ATTEMPTS = 5  # share timeouts a call may take before it is given up
STARTUP_S = 600  # for every worker to be placed and built (an autoscaler may be adding nodes)
RETRY_S = 1.0  # how often a failed call is tried again while no worker is healthy
SPREAD = "SPREAD"  # workers over as many nodes as have room: losing one node loses few of them


def split(n: int, parts: int) -> list[list[int]]:
    """``range(n)`` as ``parts`` contiguous, near-equal, non-empty slices."""
    return [s.tolist() for s in np.array_split(np.arange(n), min(parts, n))]


def micro_batches(meta_batch: int, size: int) -> list[list[int]]:
    """Task indices ``0..meta_batch-1`` as consecutive micro-batches of ``size`` tasks, the last with the rest."""
    return [list(range(start, min(start + size, meta_batch))) for start in range(0, meta_batch, size)]


def mean_gradient(gradients: Iterable[np.ndarray], meta_batch: int) -> np.ndarray:
    """The micro-batches' summed meta-gradients, given in micro-batch index order, added in that order in float64
    and divided by the meta-batch."""
    total = None
    for gradient in gradients:
        total = np.zeros(gradient.shape, np.float64) if total is None else total
        total += gradient
    return total / meta_batch


def mean_metrics(metrics: Iterable[Mapping[str, float]], meta_batch: int) -> dict[str, float]:
    """The micro-batches' summed metrics, given in micro-batch index order, added in that order and divided by the
    meta-batch."""
    sums: dict[str, float] = {}
    for micro_batch in metrics:
        for k, v in micro_batch.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return {k: v / meta_batch for k, v in sums.items()}


def batch_metrics(rounds: list[Mapping[str, float]]) -> dict[str, float]:
    """A meta-step's metrics from those of its outer steps on one sampled batch: the first's (they describe the batch
    as sampled), with every duration (a key ending in ``_s``) added up over the outer steps."""
    out = dict(rounds[0])
    for k in out:
        if k.endswith("_s"):
            out[k] = sum(r.get(k, 0.0) for r in rounds)
    return out


def broadcast(flat: np.ndarray) -> bytes | ray.ObjectRef:
    """What each worker's call carries: the parameters in the object store once, shared by every call (and
    zero-copy on every worker of a node), or, when Ray would inline them anyway, inside each call
    (``to_wire``): a small model then skips the object store's round trip every step."""
    return to_wire(flat) if flat.nbytes <= INLINE_BYTES else ray.put(flat)


@dataclass
class Call:
    """One call of ``WorkerPool.run``: its arguments, its attempts so far, and its result once one attempt gave it."""

    index: int
    args: tuple
    first: float = 0.0  # when it was first sent
    sent: float = 0.0  # when its latest attempt was sent
    tried: list[int] = field(default_factory=list)  # the workers of its attempts, latest last
    failed_at: float | None = None  # when its latest attempt failed: it waits to be sent again
    done: bool = False
    result: Any = None


class WorkerPool:
    """``cluster.workers`` actors of one class, built from the same arguments, and the calls sent to them."""

    def __init__(self, actor_cls: type, setup: WorkerSetup, cluster: ClusterConfig, splits: dict[str, Source], layout: Layout, scheduling):
        """``actor_cls``: a plain class, made an actor here; ``scheduling`` places the workers (SPREAD, or a
        placement group's strategy inside a sweep's trial)."""
        self.actor_cls, self.setup, self.cluster, self.layout, self.scheduling = ray.remote(actor_cls), setup, cluster, layout, scheduling
        self.timeout = cluster.share_timeout_s
        self.splits_ref = ray.put(splits)  # where each split is (cluster.worker.deliver), once; kept for replacements
        self.start()

    def new_worker(self) -> ray.actor.ActorHandle:
        """A worker as ``cluster`` sizes it; the pool re-sends lost calls itself, to whichever worker is free."""
        options = dict(
            num_cpus=self.cluster.num_cpus,
            num_gpus=self.cluster.num_gpus,
            resources=dict(self.cluster.resources),
            scheduling_strategy=self.scheduling,
            max_task_retries=0,
        )
        return self.actor_cls.options(**options).remote(self.setup, self.splits_ref, self.layout)

    def start(self) -> None:
        """``cluster.workers`` new workers as ``self.workers``, once every one of them is placed and built."""
        self.workers = [self.new_worker() for _ in range(self.cluster.workers)]
        self.pings: dict[ray.ObjectRef, int] = {}  # an unanswered ping to each worker that failed or stalled
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

    def run(self, method: str, args: list[tuple]) -> list:
        """``method(*a)`` on some worker for each ``a`` in ``args``; the results in the order of ``args``.

        A call whose worker died is sent to another worker (or, with none
        healthy, retried every RETRY_S until its worker is back); one still
        running after ``share_timeout_s`` is sent to another worker too, and
        the first result back wins. A call is given up after MAX_ATTEMPTS
        times ``share_timeout_s`` without a result.
        """
        calls = [Call(i, a) for i, a in enumerate(args)]
        pending: dict[ray.ObjectRef, tuple[Call, int]] = {}  # each attempt in flight, and its worker
        for call in calls:
            self.send(method, call, pending)
        try:
            while not all(call.done for call in calls):
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=RETRY_S) if pending else (time.sleep(RETRY_S) or [], [])
                for ref in ready:
                    call, w = pending.pop(ref)
                    if call.done:
                        continue
                    try:
                        call.result, call.done = ray.get(ref), True
                    except RayTaskError:
                        raise  # a bug in the computation, not a lost worker: retrying would fail the same way
                    except RayError:
                        self.ping(w)
                        call.failed_at = time.monotonic()
                self.probe()
                now, healthy = time.monotonic(), self.healthy()
                for call in calls:
                    if call.done:
                        continue
                    if now - call.first > MAX_ATTEMPTS * self.timeout:
                        raise TimeoutError(f"{method}: call {call.index} has no result after {MAX_ATTEMPTS} x share_timeout_s ({self.timeout}s)")
                    if call.failed_at is not None:
                        if healthy or now - call.failed_at > RETRY_S:
                            self.send(method, call, pending)
                    elif now - call.sent > self.timeout:  # a straggler: ask its worker whether it is alive, and send it elsewhere too
                        self.ping(call.tried[-1])
                        self.send(method, call, pending)
        finally:
            for ref in pending:
                ray.cancel(ref)  # duplicates still queued on a straggler: drop them rather than compute them
        return [call.result for call in calls]

    def send(self, method: str, call: Call, pending: dict) -> None:
        """One attempt of ``call``: to a healthy worker it has not tried, with the fewest attempts in flight."""
        healthy, load, n = self.healthy(), [0] * len(self.workers), len(self.workers)
        for _, w in pending.values():
            load[w] += 1
        w = min(range(n), key=lambda w: (w not in healthy, w in call.tried, load[w], (w - call.index) % n))
        pending[getattr(self.workers[w], method).remote(*call.args)] = (call, w)
        call.sent = time.monotonic()
        call.first, call.failed_at = call.first or call.sent, None
        call.tried.append(w)

    def ping(self, w: int) -> None:
        """Send worker ``w`` a ping; it counts as healthy again once it answers (replaced, or done with its backlog)."""
        if w not in self.pings.values():
            self.pings[self.workers[w].node.remote()] = w

    def probe(self) -> None:
        """Read the pings answered so far: a worker that died is replaced by a new one (healthy once it answers
        its own ping); one that cannot be reached for now is pinged again."""
        if not self.pings:
            return
        answered, _ = ray.wait(list(self.pings), num_returns=len(self.pings), timeout=0)
        for ref in answered:
            w = self.pings.pop(ref)
            try:
                ray.get(ref)
            except ActorDiedError:
                self.workers[w] = self.new_worker()
                self.ping(w)
            except RayError:
                self.ping(w)

    def healthy(self) -> set[int]:
        """Workers with no unanswered ping."""
        return set(range(len(self.workers))) - set(self.pings.values())

    def evaluate_split(self, flat: np.ndarray, split_name: str, tasks: int, steps: list[int]) -> dict[str, np.ndarray]:
        """Per-task evaluation metrics for tasks ``0..tasks-1`` of the split ``split_name``, spread over the workers."""
        params = broadcast(flat)
        results = self.run("evaluate_tasks", [(params, split_name, idx, steps) for idx in split(tasks, len(self.workers) * 4)])
        return {k: np.concatenate([r[k] for r in results]) for k in results[0]}

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
