"""What the generation-based learners share: a generator network meta-trained beside the model.

The generator is a submodule of the model called ``generator``, so its weights
are meta-parameters like any other (``generator.*`` in the flat vector): drawn by
``initial_params``, averaged by the driver, checkpointed and served with the rest.
The model's own forward pass never calls it.
"""

import torch
from torch import nn
from torch.func import functional_call

from meta_core.models import Params
from meta_core.registry import positive_int
from meta_core.tasks import seeded_noise

GENERATOR = "generator."
PREDICTION_SEED = 0  # every prediction draws the same noise: a served model answers a request the same way each time


def mlp(inputs: int, width: int, outputs: int) -> nn.Sequential:
    """Three linear layers with leaky ReLUs between them: the hallucinator of Wang et al. (2018)."""
    return nn.Sequential(nn.Linear(inputs, width), nn.LeakyReLU(0.2), nn.Linear(width, width), nn.LeakyReLU(0.2), nn.Linear(width, outputs))


def generator_options(noise: int, width: int) -> tuple:
    return (
        positive_int("noise", noise, "size of the generator's noise vector"),
        positive_int("generator_width", width, "hidden units per layer of the generator"),
    )


class Generative:
    """Mixin for a learner whose ``model.generator`` makes extra examples from noise and a task's real ones."""

    draws_noise = True

    def generate(self, params: Params, *inputs: torch.Tensor) -> torch.Tensor:
        """The generator's output, run with its weights from ``params``."""
        weights = {k.removeprefix(GENERATOR): v for k, v in params.items() if k.startswith(GENERATOR)}
        return functional_call(self.model.generator, weights, inputs)

    def fast_weights(self, weights: Params) -> Params:
        """The generator is meta-trained only: an inner loop never adapts it."""
        return {k: w for k, w in super().fast_weights(weights).items() if not k.startswith(GENERATOR)}

    def predict(self, params: Params, support_x, support_y, query_x, steps: int | None = None) -> torch.Tensor:
        """As trained, with generated examples; the noise is fixed, so the same request gets the same answer."""
        with seeded_noise(query_x.device, PREDICTION_SEED):
            return super().predict(params, support_x, support_y, query_x, steps)
