"""Which figure is better: a metric's direction, NaN (a diverged model's figure) as the worst, and what "improves" means.

Training that selects on validation, a sweep's ranking of its trials, ``compare``'s table of them and the register's
champion all ask this module, so that they never disagree on a figure.
"""

import math
from dataclasses import dataclass

import pandas as pd

from pipelines.config import Config


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool

    @classmethod
    def of(cls, config: Config, name: str) -> "Metric":
        """``eval_..._<loss|acc>`` (or ``val_...``), in the direction the algorithm's spec gives ``loss`` and ``acc``."""
        return cls(name, name.rsplit("_", 1)[-1] in config.algorithm_spec.higher_is_better)

    @classmethod
    def validation(cls, config: Config) -> "Metric":
        """The validation figure that selects (a sweep's trials; the best step with ``train.select_on: val``): the
        validation twin of ``register.metric``, ``eval_post_adapt_acc`` -> ``val_post_adapt_acc``."""
        return cls.of(config, "val" + config.register.metric.removeprefix("eval"))

    @property
    def mode(self) -> str:
        """As Ray Tune names the direction."""
        return "max" if self.higher_is_better else "min"

    def rankable(self, value: float) -> float:
        """``value``, with NaN (and an infinity) as the worst possible figure, so that any finite figure beats it."""
        if math.isfinite(value):
            return value
        return -math.inf if self.higher_is_better else math.inf

    def improves(self, value: float, best: float | None) -> bool:
        """Whether ``value`` is strictly better than ``best``: a non-finite figure never is, and any finite figure is
        better than none or a non-finite one."""
        if not math.isfinite(value):
            return False
        if best is None or not math.isfinite(best):
            return True
        return value > best if self.higher_is_better else value < best

    def best_first(self, table: pd.DataFrame, then: str) -> pd.DataFrame:
        """``table``'s rows by their figure in column ``name``, best first (NaN last), ties by column ``then``."""
        rank = table[self.name].map(self.rankable)
        order = table.assign(_rank=rank).sort_values(["_rank", then], ascending=[not self.higher_is_better, True], kind="stable")
        return table.loc[order.index].reset_index(drop=True)
