"""The outer loop's settings, and its optimizer over the one flat parameter vector."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OuterLoop:
    """Tasks per meta-step and the outer optimizer: Adam (the MAML default) or plain SGD (Reptile's classic step)."""

    meta_batch: int
    optimizer: str = "adam"
    lr: float = 1e-3

    def make_optimizer(self, flat: torch.Tensor) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam([flat], lr=self.lr)
        if self.optimizer == "sgd":
            return torch.optim.SGD([flat], lr=self.lr)
        raise ValueError(f"train.optimizer: expected 'adam' or 'sgd', got {self.optimizer!r}")
