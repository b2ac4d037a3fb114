"""ANIL (Raghu et al., 2020): MAML whose inner loop adapts only the head."""

from meta_core.algorithms.maml import MAML
from meta_core.models import HEAD, Params
from meta_core.registry import AlgorithmSpec, register_algorithm


class ANIL(MAML):
    def fast_weights(self, weights: Params) -> Params:
        return {k: w for k, w in weights.items() if k.startswith(HEAD)}


register_algorithm(AlgorithmSpec("anil", ANIL, "as MAML, inner loop over the head", checkpointable=True))
