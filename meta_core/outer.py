"""The outer optimizer, over the one flat parameter vector the driver holds."""

import torch


def make_optimizer(name: str, flat: torch.Tensor, lr: float) -> torch.optim.Optimizer:
    """Adam (the MAML default) or plain SGD (Reptile's classic outer step) over ``flat``."""
    if name == "adam":
        return torch.optim.Adam([flat], lr=lr)
    if name == "sgd":
        return torch.optim.SGD([flat], lr=lr)
    raise ValueError(f"train.optimizer: expected 'adam' or 'sgd', got {name!r}")
