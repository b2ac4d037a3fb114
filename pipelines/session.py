"""One training session: a config's learner, its parameters drawn once (flat, with their layout), the outer optimizer,
and the workers that take its steps and evaluate it. The pipeline, a sweep's trial and the cluster tests all train
through one."""

from collections.abc import Callable

import numpy as np
import torch

from cluster.driver import MetaDriver, make_driver
from cluster.pool import SPREAD
from cluster.worker import Source
from meta_core.algorithms import Algorithm
from meta_core.models import Layout, Params, flatten, layout_of, unflatten
from pipelines.build import build_learner, outer_loop, worker_setup
from pipelines.config import Config


class Session:
    """``flat`` is trained in place by ``steps``; the workers start on first use and stop at ``close``."""

    def __init__(self, config: Config, learner: Algorithm, layout: Layout, flat: torch.Tensor, start_driver: Callable[[], MetaDriver]):
        self.config, self.learner, self.layout, self.flat = config, learner, layout, flat
        self.optimizer = outer_loop(config).make_optimizer(flat)
        self._start_driver, self._driver = start_driver, None

    @classmethod
    def from_config(cls, config: Config, splits: dict[str, Source], scheduling=SPREAD, driver=make_driver) -> "Session":
        """The learner's initial parameters (from ``seed``), and workers holding ``splits`` placed by ``scheduling``.
        ``driver`` is ``make_driver``'s signature: tests hand in a driver whose workers fail on purpose."""
        learner = build_learner(config)
        params = learner.initial_params(config.seed)
        layout = layout_of(params)
        setup = worker_setup(config)
        return cls(config, learner, layout, flatten(params).clone(), lambda: driver(setup, config.cluster, splits, layout, scheduling=scheduling))

    @property
    def driver(self) -> MetaDriver:
        if self._driver is None:
            self._driver = self._start_driver()
        return self._driver

    def steps(self, first: int, count: int) -> list[dict[str, float]]:
        """Meta-steps ``first`` to ``first + count - 1`` on ``flat``, in place; each step's mean metrics."""
        return self.driver.steps(self.flat, self.optimizer, first, count)

    def evaluate_split(self, split: str, tasks: int, steps: list[int]) -> dict[str, np.ndarray]:
        """Per-task metrics of ``flat`` on tasks ``0..tasks-1`` of ``split``, after each number of adaptation ``steps``."""
        return self.driver.evaluate_split(self.flat.detach().numpy(), split, tasks, steps)

    def params(self) -> Params:
        """A copy of ``flat`` as named tensors, which later steps leave alone."""
        return unflatten(self.flat.detach().clone(), self.layout)

    def load(self, flat: torch.Tensor) -> None:
        """``flat`` set to ``flat`` (from a checkpoint, or trained in an earlier process), in place."""
        with torch.no_grad():
            self.flat.copy_(flat)

    def close(self) -> None:
        if self._driver is not None:
            self._driver.shutdown()
            self._driver = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
