"""What the generation-based learners share: a generator network meta-trained beside the model.

The learner adds the generator beside the network it is given, as its submodule
``generator`` (it replaces nothing), so its weights are meta-parameters like any
other (``generator.*`` in the flat vector): drawn by ``initial_params``, averaged by
the driver, checkpointed and served with the rest. The network's own forward pass
never calls it. Generated examples come from torch's default generator
(``Algorithm.draws_noise``): seeded per task in training and evaluation, and with
``PREDICTION_SEED`` when served.
"""

import torch
from torch import nn
from torch.func import functional_call

from meta_core.models import Params
from meta_core.registry import positive_int

GENERATOR = "generator."


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
