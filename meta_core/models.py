"""The MAML paper's networks, used as pure functions of a parameter dict, and that dict as one flat vector.

A module only describes the architecture; the weights travel separately as a
``dict[str, Tensor]`` so that inner loops, ``torch.func`` transforms and the
driver's flat parameter vector all speak the same language. The flat vector
(``flatten``, with its ``Layout``) is what crosses process boundaries.
"""

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from meta_core.registry import ModelSpec, positive_int, register_model

Params = dict[str, torch.Tensor]

# The last layer of every model is called ``head``: ANIL adapts only that. Built with ``outputs=None`` a model
# has none (an identity in its place): its output is the ``features`` values the head would have read.
HEAD = "head."


def head(features: int, outputs: int | None) -> nn.Module:
    return nn.Identity() if outputs is None else nn.Linear(features, outputs)


class MLP(nn.Module):
    """Two-hidden-layer ReLU net; the default 1-40-40-1 is the MAML paper's sinusoid regressor,
    ``MLP(features, ways)`` classifies rows of a user's feature table."""

    def __init__(self, in_features: int = 1, out_features: int | None = 1, hidden: int = 40):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.features, self.head = hidden, head(hidden, out_features)

    def forward(self, x):
        return self.head(self.body(x))


def conv_block(cin: int, cout: int) -> nn.Sequential:
    # BatchNorm always normalises with the batch's own statistics, as in MAML:
    # running statistics would leak information across tasks.
    # Pooling before the ReLU computes exactly the paper's conv-BN-ReLU-pool (a max commutes
    # with any non-decreasing function, values and gradients alike) with the ReLU on a
    # quarter of the activations.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout, track_running_stats=False),
        nn.MaxPool2d(2),
        nn.ReLU(),
    )


def channels_and_side(shape: tuple[int, ...]) -> tuple[int, int]:
    """An image example's channels and side: ``(H, W)`` is one channel (grayscale), ``(C, H, W)`` is ``C``."""
    return (shape[0] if len(shape) == 3 else 1), shape[-1]


class Conv4(nn.Module):
    """Four 3x3 conv blocks and a linear head: 28x28 grayscale by default, any channels and size."""

    def __init__(self, ways: int | None, width: int = 64, channels: int = 1, image_size: int = 28):
        super().__init__()
        self.body = nn.Sequential(conv_block(channels, width), conv_block(width, width), conv_block(width, width), conv_block(width, width))
        side = image_size
        for _ in range(4):
            side //= 2
        self.features = width * side * side
        self.head = head(self.features, ways)

    def forward(self, x):
        if x.dim() == 3:  # (batch, H, W) -> (batch, 1, H, W)
            x = x.unsqueeze(1)
        return self.head(self.body(x).flatten(1))


class GaussianPolicy(nn.Module):
    """The MAML paper's point-navigation policy: a ReLU MLP for the action mean, and
    ``log_std``, one learned state-independent log standard deviation per action dimension."""

    def __init__(self, hidden: int = 100, observation: int = 2, action: int = 2):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(observation, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.features, self.head = hidden, head(hidden, action)
        self.log_std = nn.Parameter(torch.zeros(action))

    def forward(self, x):
        return self.head(self.body(x))


class RecurrentGaussianPolicy(nn.Module):
    """RL2's policy (Duan et al. 2016): a GRU cell of ``hidden`` units reading one step's input (observation,
    previous action and reward, and an episode-start flag), a linear head for the action mean from the new hidden
    state, and a learned state-independent ``log_std``. Written out with linear maps (PyTorch's ``GRUCell`` equations),
    so that it runs under ``vmap`` and ``torch.func`` as the other models do."""

    def __init__(self, hidden: int, inputs: int, action: int):
        super().__init__()
        self.hidden = hidden
        self.input, self.recurrent = nn.Linear(inputs, 3 * hidden), nn.Linear(hidden, 3 * hidden)
        self.head = nn.Linear(hidden, action)
        self.log_std = nn.Parameter(torch.zeros(action))

    def forward(self, x, hidden):
        """The action mean and the hidden state after reading ``x`` (..., inputs) from ``hidden`` (..., hidden)."""
        reset_i, update_i, new_i = self.input(x).chunk(3, -1)
        reset_h, update_h, new_h = self.recurrent(hidden).chunk(3, -1)
        reset, update = torch.sigmoid(reset_i + reset_h), torch.sigmoid(update_i + update_h)
        hidden = (1 - update) * torch.tanh(new_i + reset * new_h) + update * hidden
        return self.head(hidden), hidden


MLP_SPEC = register_model(
    ModelSpec(
        "mlp",
        lambda shape, outputs: MLP(shape[-1], outputs),
        "two 40-unit ReLU layers (the MAML paper's sinusoid regressor)",
        inputs=("vectors",),
    )
)
CONV4_SPEC = register_model(
    ModelSpec(
        "conv4",
        lambda shape, outputs, width: Conv4(outputs, width, *channels_and_side(shape)),
        "four 3x3 conv blocks and a linear head",
        inputs=("images",),
        options=(positive_int("width", 64, "filters per layer"),),
    )
)
POLICY_SPEC = register_model(
    ModelSpec(
        "policy",
        lambda shape, outputs, width: GaussianPolicy(width, shape[-1], outputs),
        "a Gaussian MLP policy",
        inputs=("observations",),
        options=(positive_int("width", 100, "hidden units per layer"),),
    )
)
RECURRENT_POLICY_SPEC = register_model(
    ModelSpec(
        "recurrent_policy",
        lambda shape, outputs, width: RecurrentGaussianPolicy(width, shape[-1] + outputs + 2, outputs),
        "a Gaussian GRU policy reading observation, previous action and reward, and an episode-start flag (RL2)",
        inputs=("observations",),
        options=(positive_int("width", 64, "hidden units of the GRU"),),
    )
)


def init_params(model: nn.Module, seed: int) -> Params:
    """Fresh weights drawn from ``seed`` with PyTorch's default initialisers."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    torch.random.set_rng_state(gen_state)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def forward(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Run ``model`` with ``params`` in place of its own weights."""
    return functional_call(model, params, (x,))


Layout = list[tuple[str, tuple[int, ...]]]  # each parameter's name and shape, in the flat vector's order


def layout_of(params: Params) -> Layout:
    return [(k, tuple(v.shape)) for k, v in params.items()]


def numel(layout: Layout) -> int:
    """How many values the flat vector of ``layout`` holds."""
    return sum(int(np.prod(shape, dtype=np.int64)) for _, shape in layout)


def flatten(params: Params, dtype=torch.float32) -> torch.Tensor:
    return torch.cat([v.detach().reshape(-1).to(dtype) for v in params.values()])


def unflatten(flat: torch.Tensor, layout: Layout) -> Params:
    out, offset = {}, 0
    for name, shape in layout:
        size = int(np.prod(shape, dtype=np.int64))
        out[name] = flat[offset : offset + size].view(shape)
        offset += size
    if offset != flat.numel():
        raise ValueError(f"flat parameter vector has {flat.numel()} values, layout expects {offset}")
    return out
