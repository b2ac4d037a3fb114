"""Peak memory of one task's meta-gradient against inner steps: second-order MAML, first-order MAML, and
second-order MAML with a checkpointed inner loop; Omniglot-shaped (28x28) or mini-ImageNet-shaped (3x84x84).

Each figure is measured in a fresh process, during one ``task_gradient`` of a 5-way
1-shot, 15-query task on conv4, above what was in use just before it: on CUDA
the allocator's peak; on CPU the peak of glibc's heap in use (``mallinfo2``),
read after every tensor operation. Resident-set peaks would not do on CPU: the
allocator keeps and reuses freed pages, which hides the few MiB per inner step.
A one-query task runs first, so that loading code is not counted.

    .venv/bin/python -m benchmarks.memory --measure '{"variant": "checkpointed", "inner_steps": 10}'
    .venv/bin/python -m benchmarks.memory --measure '{"variant": "second order", "inner_steps": 5, "shape": [3, 84, 84], "width": 32}'
"""

import argparse
import ctypes
import json
import time

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.common import finished


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip


MALLINFO2 = ctypes.CDLL("libc.so.6").mallinfo2  # glibc 2.33+; looked up once, called after every tensor op
MALLINFO2.restype = MallInfo2


def heap_in_use() -> int:
    """Bytes of the C heap in use: small blocks plus mmap-ed large ones."""
    info = MALLINFO2()
    return info.uordblks + info.hblkhd


class PeakHeap(TorchDispatchMode):
    """The highest ``heap_in_use`` after any tensor operation run inside it (backward passes included)."""

    def __enter__(self):
        self.start = self.peak = heap_in_use()
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, heap_in_use())
        return out


VARIANTS = {"second order": ("maml", {}), "first order": ("fomaml", {}), "checkpointed": ("maml", {"checkpoint_inner": True})}
DEFAULTS = {"width": 64, "device": "cpu", "shape": [28, 28]}
MINI_IMAGENET = {"shape": [3, 84, 84], "width": 32}  # MAML's mini-ImageNet network (32 filters), on random images


def extra_peak_mib(call, device: str) -> float:
    """MiB above what was in use just before ``call()``, at its peak: the allocator's on CUDA, glibc's heap on CPU."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        call()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with PeakHeap() as heap:
        call()
    return (heap.peak - heap.start) / 2**20


def conv4_learner(name: str, inner_steps: int, inner_lr: float, width: int, device: str, shape=(28, 28), **options):
    """A 5-way conv4 learner of algorithm ``name`` for examples of ``shape``, and its initial parameters, on ``device``."""
    from meta_core.registry import ALGORITHMS, MODELS

    model = MODELS["conv4"].make(tuple(shape), 5, width=width).to(device)
    algo = ALGORITHMS[name].make(model, "classification", inner_steps=inner_steps, inner_lr=inner_lr, **options)
    return algo, {k: v.to(device) for k, v in algo.initial_params(0).items()}


def shaped_task(shots: int, queries: int, device: str, shape=(28, 28)):
    """A 5-way task of random images of ``shape`` (Omniglot's 28x28 by default)."""
    from meta_core.tasks import ClassificationTasks, task_rng

    images = np.random.default_rng(0).random((10, 20, *shape), dtype=np.float32)
    return ClassificationTasks(images, ways=5, shots=shots, queries=queries).sample(task_rng(0, 0, 0, 0)).to(device)


def measure(spec: dict) -> dict:
    spec = {**DEFAULTS, **spec}
    device = spec["device"]
    torch.set_num_threads(1)
    task, warmup = (shaped_task(1, queries, device, spec["shape"]) for queries in (15, 1))
    name, options = VARIANTS[spec["variant"]]
    algo, params = conv4_learner(name, spec["inner_steps"], 0.4, spec["width"], device, spec["shape"], **options)
    algo.task_gradient(params, warmup)  # every module and kernel this variant uses is loaded before the baseline
    extra = extra_peak_mib(lambda: algo.task_gradient(params, task), device)
    started = time.perf_counter()  # timed again, outside the measurement
    algo.task_gradient(params, task)
    finished(device)
    return {"mib": extra, "s": time.perf_counter() - started}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", required=True, help="a JSON spec: variant, inner_steps, and any of " + ", ".join(DEFAULTS))
    print(json.dumps(measure(json.loads(parser.parse_args().measure))))
