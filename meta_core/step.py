"""One meta-step's parts as plain functions: a worker's share of it (and of an evaluation), and the outer step.

The Ray actor, the single-process path and the benchmarks all call these, so
there is exactly one implementation of "sum the meta-gradients of these tasks",
and one outer optimizer (``OuterLoop``) for the driver and every all-reduce rank.
"""

import contextlib
import functools
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import vmap

from meta_core.algorithms import Algorithm
from meta_core.models import Layout, flatten, unflatten
from meta_core.tasks import TRAIN, seeded_noise, stack, task_rng


def draw(source, seed: int, stream: int, step: int, indices, device="cpu"):
    return [source.sample(task_rng(seed, stream, step, int(i))).to(device) for i in indices]


def noise_for(algo: Algorithm, device, seed: int, stream: int, step: int, index: int):
    """The task's own noise for a learner that draws noise (``Algorithm.draws_noise``); nothing to seed otherwise."""
    return seeded_noise(device, seed, stream, step, int(index)) if algo.draws_noise else contextlib.nullcontext()


def vectorized(choice: bool | str, model: str, on_gpu: bool) -> bool:
    """Whether a share's tasks run as one ``vmap`` call: ``choice``, where ``"auto"`` means the small MLP
    (per-task Python overhead dominates) or a GPU; the loop wins for conv nets on CPU (benchmarks/)."""
    return (model == "mlp" or on_gpu) if choice == "auto" else choice


def runs_vectorized(algo: Algorithm, vectorize: bool) -> bool:
    """Whether ``micro_batch_gradient`` runs its tasks as one ``vmap`` call: as asked, except a checkpointed inner loop
    (plain autograd, which ``vmap`` cannot batch) and a learner that draws noise (each task with its own), which run
    task by task."""
    return vectorize and not algo.checkpoint_inner and not algo.draws_noise


@functools.cache
def task_gradient_fn(algo: Algorithm, vectorize: bool, compiled: bool, pre_adapt: bool):
    """``algo.task_gradient`` (with or without the pre-adaptation metrics), or its ``vmap`` over a stack of tasks;
    with ``compiled``, ``torch.compile``-d once per algorithm object and flags (it recompiles only for new task
    shapes)."""
    fn = functools.partial(algo.task_gradient, pre_adapt=pre_adapt)
    fn = vmap(fn, in_dims=(None, 0)) if vectorize else fn
    return compiled_or_eager(fn) if compiled else fn


def compiled_or_eager(fn):
    """``torch.compile(fn)`` that turns back into ``fn`` itself, with a warning, where torch cannot compile it
    (an operator or device its compiler does not handle): compiling only ever buys speed, so it never fails a run.
    An error in ``fn`` itself then comes from the eager call, as it would without compiling."""
    compiled = torch.compile(fn, dynamic=False)

    def call(*args):
        nonlocal compiled
        try:
            return compiled(*args)
        except torch._dynamo.exc.TorchDynamoException as error:
            first_line = (str(error).strip().splitlines() or [""])[0]
            warnings.warn(
                f"train.compile: torch could not compile the meta-gradient, so it runs eagerly ({type(error).__name__}: {first_line})", stacklevel=2
            )
            compiled = fn
            return fn(*args)

    return call


def samples_episodes(algo: Algorithm) -> bool:
    """Whether ``algo`` samples its tasks' episodes (``Algorithm.sample``): its meta-steps then report where their time goes."""
    return type(algo).sample is not Algorithm.sample


def sampled(
    algo: Algorithm, source, behaviour: torch.Tensor, layout: Layout, seed: int, step: int, indices, device, cache: dict | None = None
) -> tuple[list, dict]:  # fmt: skip
    """The tasks ``indices`` of ``step`` as ``task_gradient`` reads them (``Algorithm.sample``), from the flat
    ``behaviour`` parameters, and the metrics of sampling them. With ``cache``, a worker's dict, what it sampled for
    this step is kept and given again for the same behaviour parameters (``Algorithm.outer_steps`` calls a step), with
    no metrics: the first call reported them."""
    key = (step, tuple(int(i) for i in indices))
    kept = cache.get(key) if cache is not None else None
    if kept is not None and torch.equal(kept[0], behaviour):
        return kept[1], {}
    tasks, metrics = algo.sample(unflatten(behaviour, layout), draw(source, seed, TRAIN, step, indices, device))
    if cache is not None:
        for old in [k for k in cache if k[0] != step]:
            del cache[old]
        cache[key] = (behaviour.clone(), tasks)
    return tasks, metrics


def micro_batch_gradient(
    algo: Algorithm, source, flat_params: torch.Tensor, layout: Layout, seed: int, step: int, indices, vectorize: bool,
    compiled: bool = False, pre_adapt: bool = True, behaviour: torch.Tensor | None = None, cache: dict | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """Sum over ``indices`` of each task's meta-gradient (float64, on the parameters' device), and summed metrics.

    ``vectorize`` runs all tasks as one ``vmap``-ed call (``runs_vectorized``): a
    large win for small models, where Python overhead per task dominates; the
    loop wins for conv nets on CPU (see benchmarks/). Either way the sum is taken
    in the order of ``indices``, so the same tasks give the same bits: a
    vmap-ed call's kernels, and their rounding, follow the number of tasks
    stacked, which is why the cluster computes fixed micro-batches
    (``cluster.pool``).
    ``compiled`` runs the per-task (or vmap-ed) function through ``torch.compile``
    (benchmarks/ measures what it saves). ``pre_adapt`` adds the pre-adaptation
    query metrics, at the cost of a forward pass. ``behaviour``: the flat parameters the tasks' episodes are
    sampled with (``sampled``; by default ``flat_params``), and ``cache`` where a worker keeps them.
    """
    params, device = unflatten(flat_params, layout), flat_params.device
    vectorize = runs_vectorized(algo, vectorize)
    kept = cache if behaviour is not None else None  # one outer step per batch: nothing to keep
    behaviour = flat_params if behaviour is None else behaviour
    tasks, sample_metrics = sampled(algo, source, behaviour, layout, seed, step, indices, "cpu" if vectorize else device, kept)
    task_gradient = task_gradient_fn(algo, vectorize, compiled, pre_adapt)
    started = time.perf_counter()
    if vectorize:  # stacked where drawn: one copy to the device per field, not one per task and field
        grads, metrics = task_gradient(params, stack(tasks).to(device))
        total = flatten({k: g.sum(0, dtype=torch.float64) for k, g in grads.items()}, torch.float64)
        sums = {k: float(v.double().sum()) for k, v in metrics.items()}
    else:
        total = torch.zeros(flat_params.numel(), dtype=torch.float64, device=device)
        sums: dict[str, float] = {}
        for index, task in zip(indices, tasks, strict=True):
            with noise_for(algo, device, seed, TRAIN, step, index):
                grads, metrics = task_gradient(params, task)
            total += flatten(grads, torch.float64)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
    if samples_episodes(algo):
        sums.update({k: float(v) for k, v in sample_metrics.items()}, grad_s=time.perf_counter() - started)
    return total, sums


def micro_batch_query(
    algo: Algorithm, source, flat_params: torch.Tensor, layout: Layout, seed: int, step: int, indices, name: str, vector: torch.Tensor,
    behaviour: torch.Tensor, cache: dict | None = None,
) -> torch.Tensor:  # fmt: skip
    """Sum over ``indices``, in their order and in float64, of ``algo.task_query(name, ...)`` at ``flat_params`` on
    each task's data sampled with ``behaviour`` (``sampled``): what a learner's own outer step asks (``outer_update``)."""
    params = unflatten(flat_params, layout)
    tasks, _ = sampled(algo, source, behaviour, layout, seed, step, indices, flat_params.device, cache)
    total = None
    for task in tasks:
        value = algo.task_query(name, params, task, vector)
        total = value if total is None else total + value
    return total


def evaluate_tasks(
    algo: Algorithm, source, flat_params: torch.Tensor, layout: Layout, seed: int, stream: int, indices, steps: list[int]
) -> dict[str, np.ndarray]:
    """Per-task query metrics before and after each number of adaptation steps."""
    params, device = unflatten(flat_params, layout), flat_params.device
    rows = []
    for index, task in zip(indices, draw(source, seed, stream, 0, indices, device), strict=True):
        with noise_for(algo, device, seed, stream, 0, index):
            rows.append(algo.evaluate_task(params, task, steps))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


@dataclass(frozen=True)
class OuterLoop:
    """Tasks per meta-step and the outer optimizer: Adam (the MAML default) or plain SGD (Reptile's classic step);
    ``steps_per_batch`` optimizer steps on each meta-step's sampled batch (``Algorithm.outer_steps``)."""

    meta_batch: int
    optimizer: str = "adam"
    lr: float = 1e-3
    steps_per_batch: int = 1

    def make_optimizer(self, flat: torch.Tensor) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam([flat], lr=self.lr)
        if self.optimizer == "sgd":
            return torch.optim.SGD([flat], lr=self.lr)
        raise ValueError(f"train.optimizer: expected 'adam' or 'sgd', got {self.optimizer!r}")
