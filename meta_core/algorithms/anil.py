"""ANIL (Raghu et al., 2020): MAML whose inner loop adapts only the head."""

from meta_core.algorithms.maml import MAML
from meta_core.models import HEAD, Params


class ANIL(MAML):
    def adapted(self, weights: Params) -> Params:
        return {k: w for k, w in weights.items() if k.startswith(HEAD)}
