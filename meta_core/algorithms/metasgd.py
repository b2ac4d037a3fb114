"""Meta-SGD (Li et al., 2017): MAML that also learns a learning rate per parameter."""

import torch

from meta_core.algorithms.maml import MAML
from meta_core.models import Params
from meta_core.registry import AlgorithmSpec, register_algorithm


class MetaSGD(MAML):
    """Inner step ``w - lr_w * g`` where every ``lr.<name>`` is a meta-parameter shaped like ``<name>``."""

    def init(self, weights: Params) -> Params:
        lrs = {f"lr.{k}": torch.full_like(w, self.inner_lr) for k, w in self.fast_weights(weights).items()}
        return {**weights, **lrs}

    def inner_step(self, params: Params, weights: Params, x, y) -> Params:
        grads = self.inner_grad(weights, x, y)
        return {k: w - params[f"lr.{k}"] * grads[k] if k in grads else w for k, w in weights.items()}


register_algorithm(AlgorithmSpec("metasgd", MetaSGD, "as MAML, through `w - lr_w * g`", checkpointable=True))
