"""The outer loop's settings, and its optimizer over the one flat parameter vector."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OuterLoop:
    """Tasks per meta-step and the outer optimizer: Adam (the MAML default) or plain SGD (Reptile's classic step);
    ``steps_per_batch`` optimizer steps on each meta-step's sampled batch (``Algorithm.outer_steps``)."""

    meta_batch: int
    optimizer: str = "adam"
    lr: float = 1e-3
    steps_per_batch: int = 1

    def make_optimizer(self, flat: torch.Tensor) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam([flat], lr=self.lr)
        if self.optimizer == "sgd":
            return torch.optim.SGD([flat], lr=self.lr)
        raise ValueError(f"train.optimizer: expected 'adam' or 'sgd', got {self.optimizer!r}")
