"""From a typed config to what the lower layers take as arguments: the learner, the workers' setup, task sources."""

import functools
from pathlib import Path

import numpy as np

import data
from cluster.config import ClusterConfig, WorkerSetup
from meta_core.algorithms import Algorithm
from meta_core.registry import Learner
from meta_core.step import OuterLoop, runs_vectorized, vectorized
from meta_core.trajectories import trajectory_tasks
from pipelines.config import Config, ConfigError


def prepared(config: Config) -> Path:
    """The prepared dataset's folder (``data.prepare``), checked against the config's task shape; a large data set
    is decoded on the cluster that ``cluster.address`` names."""
    from cluster.driver import connect

    return data.prepare(config.data, config.seed, config.task, connect=lambda: connect(config.cluster.address))


def learner(config: Config) -> Learner:
    """The algorithm with its model, sized for one example of the data set and one output per way (or value)."""
    _, shape = config.dataset.example(config.data)
    options = dict(config.algorithm.options)
    if config.algorithm_spec.checkpointable:
        options["checkpoint_inner"] = config.algorithm.checkpoint_inner
    return Learner(
        config.algorithm_spec, config.model_spec, config.dataset.kind, shape,
        outputs=config.dataset.outputs(config.task),
        inner_steps=config.algorithm.inner_steps, inner_lr=config.algorithm.inner_lr, options=options, model_options=dict(config.model.options),
    )  # fmt: skip


def build_learner(config: Config) -> Algorithm:
    return learner(config).build()


def tasks(config: Config):
    """``tasks(examples, split)``: a split's task source, able to serve the most adaptation steps training or evaluation
    takes; a lifelong learner's are streams of classes (``meta_core.trajectories``) from the data set's examples."""
    adapt_steps = max(config.algorithm.inner_steps, *config.eval.steps)
    if config.algorithm_spec.lifelong:
        options, stats = dict(config.algorithm.options), config.dataset.stats
        return functools.partial(
            trajectory_tasks, shape=config.task, adapt_steps=adapt_steps, options=options, stats=stats, augment=config.data.augment
        )
    return functools.partial(config.dataset.tasks, config.task, adapt_steps=adapt_steps, data=config.data)


def task_source(config: Config, examples: np.ndarray | None = None, split: str = "train"):
    return tasks(config)(examples, split=split)


def outer_loop(config: Config) -> OuterLoop:
    """The outer optimizer, taking the algorithm's ``outer_steps`` option's steps on each sampled batch (one without it)."""
    return OuterLoop(config.train.meta_batch, config.train.optimizer, config.train.outer_lr, config.algorithm.options.get("outer_steps", 1))


def check_placeable(cluster: ClusterConfig) -> None:
    """Refuse, in one line, workers that the cluster's nodes cannot place, rather than wait for them to start.

    Each worker must fit on one node: a node holds as many as each of its resources allows. A sweep counts how many
    of its trials fit instead (``sweep.trials_that_fit``), since Tune places each trial's workers itself.
    """
    import ray

    worker = {"CPU": cluster.num_cpus, "GPU": cluster.num_gpus, **cluster.resources}
    worker = {name: amount for name, amount in worker.items() if amount}
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    fits = sum(min(int(node.get(name, 0) // amount) for name, amount in worker.items()) for node in nodes)
    if fits < cluster.workers:
        largest = max(nodes, key=lambda node: node.get("CPU", 0), default={})
        raise ConfigError(
            f"config key 'cluster': {cluster.workers} workers of {worker} each do not fit on this cluster (it places {fits}; its largest node has "
            f"{largest.get('CPU', 0):g} CPUs and {largest.get('GPU', 0):g} GPUs): lower cluster.workers, cluster.num_cpus or cluster.num_gpus"
        )


def micro_batch(config: Config) -> int:
    """``train.micro_batch``, where ``auto`` is the whole meta-batch for tasks that run as one vmap call (on workers
    with GPUs if ``cluster.num_gpus`` asks for them), whose overhead per call dominates small tasks, and one task for
    tasks that run one by one, so that every worker gets some."""
    train = config.train
    if train.micro_batch != "auto":
        return train.micro_batch
    vectorize = vectorized(train.vectorize, config.model.name, on_gpu=config.cluster.num_gpus > 0)
    return train.meta_batch if runs_vectorized(build_learner(config), vectorize) else 1


def worker_setup(config: Config) -> WorkerSetup:
    train, cluster = config.train, config.cluster
    return WorkerSetup(
        learner(config), tasks(config), outer_loop(config), config.seed, train.pre_adapt_every, train.vectorize, train.compile,
        cluster.num_cpus, cluster.num_gpus, micro_batch(config),
    )  # fmt: skip
