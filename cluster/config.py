"""What the driver and its workers are given, as plain arguments. No Ray import here: configs are checked, and
served models rebuilt, where Ray is not needed."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meta_core.registry import Learner
from meta_core.step import OuterLoop


@dataclass(frozen=True)
class ClusterConfig:
    """The ``cluster:`` section of a config: where Ray runs, how many workers of what size, how they aggregate."""

    address: str | None = None
    workers: int = 2
    num_cpus: float = 1
    num_gpus: float = 0
    micro_batch: int = 1  # tasks per micro-batch (cluster.pool)
    share_timeout_s: float = 600
    resources: Mapping[str, float] = field(default_factory=dict)
    aggregation: str = "driver"
    steps_per_call: int = 1


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs, as plain arguments: the learner, how a split's examples become its task source
    (``tasks(examples, split=name)``), the outer loop (for workers that take the outer step), and how to run."""

    learner: Learner
    tasks: Callable[..., Any]
    outer: OuterLoop
    seed: int = 0
    pre_adapt_every: int = 10  # steps between pre-adaptation metrics (an extra forward pass each)
    vectorize: bool | str = "auto"  # meta_core.step.vectorized
    compile: bool = False
    num_cpus: float = 1
    num_gpus: float = 0
    micro_batch: int = 1  # tasks per micro-batch (cluster.pool)
