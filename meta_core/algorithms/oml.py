"""OML (Javed & White 2019, as fixed in July 2020): meta-learn a representation for one-pass SGD on a linear head.

The inner loop learns the trajectory with the prediction layer (the network's ``head``) alone; the outer loss
is the query loss of the adapted network, differentiated into both the representation and the head's start.
"""

import torch
import torch.nn.functional as F
from torch.func import functional_call

from meta_core.algorithms.base import task_loss
from meta_core.algorithms.continual import LIFELONG, StreamLearner, learner_of, stream_options
from meta_core.models import HEAD, Params
from meta_core.registry import AlgorithmSpec, register_algorithm

BODY = "body."  # the representation: the body of a Classifier (continual.py)


class OML(StreamLearner):
    """The inner steps leave the representation alone, so it reads the whole stream in one batch (``stream_inputs``,
    its features, differentiable in its weights), and each step is the head's alone."""

    def fast_weights(self, weights: Params) -> Params:
        return {k: v for k, v in weights.items() if k.startswith(HEAD)}

    def stream_inputs(self, weights: Params, x: torch.Tensor) -> torch.Tensor:
        body = {k.removeprefix(BODY): v for k, v in weights.items() if k.startswith(BODY)}
        return functional_call(self.model.body, body, (x,))

    def loss(self, weights: Params, features, y) -> torch.Tensor:
        return task_loss(self.kind, F.linear(features, weights["head.weight"], weights["head.bias"]), y)


register_algorithm(
    AlgorithmSpec(
        "oml",
        learner_of(OML),
        "one-pass SGD on the head over a stream of classes, the representation meta-learned through it (lifelong)",
        options=stream_options(remember=15, replay=False),
        **LIFELONG,
    )
)
