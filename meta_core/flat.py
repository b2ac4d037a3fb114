"""Parameter dicts <-> one flat vector: what crosses process boundaries."""

import numpy as np
import torch

from meta_core.models import Params

Layout = list[tuple[str, tuple[int, ...]]]


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
