"""The driver's side of a meta-step: broadcast parameters, gather shares, average.

Shares are contiguous slices of the meta-batch's task indices. A share is a pure
function of (parameters, step, indices), so a share lost with its worker, or
stuck on a straggler, is simply computed again elsewhere with the same tasks.
"""

import os
import time

import numpy as np
import ray
from ray.exceptions import RayError, RayTaskError

from cluster.worker import MetaWorker
from meta_core.flat import Layout

MAX_ATTEMPTS = 5  # per share, before the step is given up


def connect(address: str | None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``); with neither, start a local Ray on loopback with token auth on."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False)


def split(n: int, parts: int) -> list[list[int]]:
    """``range(n)`` as ``parts`` contiguous, near-equal, non-empty slices."""
    return [s.tolist() for s in np.array_split(np.arange(n), min(parts, n))]


class Driver:
    """Owns the workers; turns parameters and a step number into the averaged meta-gradient."""

    def __init__(self, config: dict, splits: dict[str, np.ndarray], layout: Layout, worker_cls=MetaWorker):
        cluster = config["cluster"]
        self.meta_batch = config["train"]["meta_batch"]
        self.timeout = cluster["share_timeout_s"]
        self.splits_ref = ray.put(splits)  # once: every worker on a node maps the same memory; kept for restarts
        options = dict(num_cpus=cluster["num_cpus"], num_gpus=cluster["num_gpus"], max_restarts=-1, max_task_retries=0)
        self.workers = [worker_cls.options(**options).remote(config, self.splits_ref, layout) for _ in range(cluster["workers"])]

    def gradient(self, flat: np.ndarray, step: int) -> tuple[np.ndarray, dict[str, float]]:
        """Mean meta-gradient (float64) over the meta-batch of ``step``, and mean metrics."""
        params_ref = ray.put(flat)
        shares = split(self.meta_batch, len(self.workers))
        results = self.run("meta_gradient", [(params_ref, step, idx) for idx in shares])
        total = np.zeros(flat.size, dtype=np.float64)
        sums: dict[str, float] = {}
        for grad, metrics in results:
            total += grad
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
        return total / self.meta_batch, {k: v / self.meta_batch for k, v in sums.items()}

    def evaluate(self, flat: np.ndarray, stream: int, tasks: int, steps: list[int]) -> dict[str, np.ndarray]:
        """Per-task evaluation metrics for tasks ``0..tasks-1`` of ``stream``, spread over the workers."""
        params_ref = ray.put(flat)
        chunks = split(tasks, len(self.workers) * 4)
        results = self.run("evaluate", [(params_ref, stream, idx, steps) for idx in chunks])
        return {k: np.concatenate([r[k] for r in results]) for k in results[0]}

    def run(self, method: str, calls: list[tuple]) -> list:
        """Run each call on some worker and return results in call order.

        A call whose worker died is sent to the next worker; one still running
        after ``share_timeout_s`` is sent to another worker too, and the first
        result back wins.
        """
        results, done = [None] * len(calls), [False] * len(calls)
        pending: dict[ray.ObjectRef, int] = {}
        started, attempts = {}, [0] * len(calls)

        def submit(i: int) -> None:
            worker = self.workers[(i + attempts[i]) % len(self.workers)]
            pending[getattr(worker, method).remote(*calls[i])] = i
            started[i], attempts[i] = time.monotonic(), attempts[i] + 1

        for i in range(len(calls)):
            submit(i)
        while not all(done):
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                i = pending.pop(ref)
                if done[i]:
                    continue
                try:
                    results[i], done[i] = ray.get(ref), True
                except RayTaskError:
                    raise  # a bug in the computation, not a lost worker: retrying would fail the same way
                except RayError:
                    if attempts[i] >= MAX_ATTEMPTS:
                        raise
                    submit(i)
            now = time.monotonic()
            for i in {i for i in pending.values() if not done[i] and now - started[i] > self.timeout}:
                if attempts[i] >= MAX_ATTEMPTS:
                    raise TimeoutError(f"{method}: share {i} not back after {attempts[i]} attempts of {self.timeout}s")
                submit(i)
        return results

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
