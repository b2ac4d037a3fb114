"""ANML (Beaulieu et al. 2020): a neuromodulatory network gates the prediction network, which learns the stream.

The inner loop learns the trajectory with the whole prediction network (everything but ``nm.``); the
neuromodulatory network learns only in the outer loop, through its gating of every inner step. The authors' code
is first order by accident (its gradients are taken without ``create_graph``): ``first_order: true`` is that.
"""

import torch
import torch.nn.functional as F
from torch.func import functional_call

from meta_core.algorithms.base import task_loss
from meta_core.algorithms.continual import LIFELONG, StreamLearner, learner_of, stream_options
from meta_core.models import HEAD, Params
from meta_core.registry import AlgorithmSpec, register_algorithm

NEUROMODULATION = "body.nm."  # the network is the body of a Classifier (continual.py)
PREDICTION = "body.pln."


def part(weights: Params, prefix: str) -> Params:
    return {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}


class ANML(StreamLearner):
    """The inner steps leave the neuromodulatory network alone, so it gates the whole stream in one batch
    (``stream_inputs``): each example's row is its pixels, then its gates, differentiable in the ``nm.`` weights,
    and each step runs the prediction network alone."""

    def fast_weights(self, weights: Params) -> Params:
        return {k: v for k, v in weights.items() if not k.startswith(NEUROMODULATION)}

    def stream_inputs(self, weights: Params, x: torch.Tensor) -> torch.Tensor:
        gates = functional_call(self.model.body.nm, part(weights, NEUROMODULATION), (x if x.dim() == 4 else x.unsqueeze(1),))
        return torch.cat([x.flatten(1), gates], 1)

    def loss(self, weights: Params, rows, y) -> torch.Tensor:
        pixels, gates = rows[:, : -self.model.body.features].detach(), rows[:, -self.model.body.features :]  # pixels: data, no gradient
        images = pixels.reshape(len(rows), -1, *self.input_shape[-2:])
        features = functional_call(self.model.body.pln, part(weights, PREDICTION), (images,)) * gates
        return task_loss(self.kind, F.linear(features, weights[f"{HEAD}weight"], weights[f"{HEAD}bias"]), y)


register_algorithm(
    AlgorithmSpec(
        "anml",
        learner_of(ANML),
        "one-pass SGD on a neuromodulated network over a stream of classes, the gating meta-learned through it (lifelong)",
        options=stream_options(remember=64, replay=True),
        models=("anml_net",),
        **LIFELONG,
    )
)
