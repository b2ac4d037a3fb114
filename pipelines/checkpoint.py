"""Training checkpoints: written atomically, read back with ``weights_only=True``."""

import os
from pathlib import Path

import torch


def path_for(checkpoint_dir: str, train_run_id: str) -> Path:
    return Path(checkpoint_dir) / f"{train_run_id}.pt"


def save(path: Path, flat: torch.Tensor, optimizer: torch.optim.Optimizer, step: int, stage_key: str, best: dict | None = None) -> None:
    """Everything needed to continue at ``step``, with ``best``, the selection on validation so far (tensors and
    numbers); a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {"flat": flat.detach().clone(), "optimizer": optimizer.state_dict(), "step": step, "stage_key": stage_key, "best": best}
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path, stage_key: str) -> dict | None:
    """The checkpoint at ``path``, or None if there is none; refuses one written for another train stage."""
    if not path.exists():
        return None
    state = torch.load(path, weights_only=True)
    if state["stage_key"] != stage_key:
        raise ValueError(f"{path}: checkpoint belongs to train stage {state['stage_key']}, not {stage_key}")
    return state
