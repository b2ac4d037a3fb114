"""Training checkpoints: written atomically, read back with ``weights_only=True``."""

import os
from pathlib import Path

import torch


def path_for(config: dict, train_run_id: str) -> Path:
    return Path(config["train"]["checkpoint_dir"]) / f"{train_run_id}.pt"


def save(path: Path, flat: torch.Tensor, optimizer: torch.optim.Optimizer, step: int, config_digest: str) -> None:
    """Everything needed to continue at ``step``; a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {"flat": flat.detach().clone(), "optimizer": optimizer.state_dict(), "step": step, "config_digest": config_digest}
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path, config_digest: str) -> dict | None:
    """The checkpoint at ``path``, or None if there is none; refuses one written for another config."""
    if not path.exists():
        return None
    state = torch.load(path, weights_only=True)
    if state["config_digest"] != config_digest:
        raise ValueError(f"{path}: checkpoint belongs to config {state['config_digest']}, not {config_digest}")
    return state
