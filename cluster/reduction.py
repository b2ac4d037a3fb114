"""A meta-batch as fixed micro-batches, and their ordered reduction: the same bits whatever the number of workers.

A meta-batch is cut into micro-batches of ``train.micro_batch`` tasks (the last one may be smaller) whatever the
number of workers. Each micro-batch's meta-gradient is summed on one worker, in float64, and with the same shapes
wherever it runs (a vmap-ed micro-batch always stacks the same tasks). Workers get contiguous runs of whole
micro-batches and return each micro-batch's sum apart, rounded once to float32 (half the bytes of float64, and the
same rounding wherever it is done); the sums are then added in micro-batch index order, in
float64, by the driver or alike by every rank of an all-reduce group. So no sum depends on how many workers there
were, which of them computed what, or the order in which their results arrived.
"""

from collections.abc import Iterable, Mapping

import numpy as np


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
