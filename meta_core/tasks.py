"""Few-shot task distributions.

Every task is drawn from its own generator keyed by ``(seed, stream, step,
index)``, never from a global RNG: the same meta-step draws the same tasks
however its meta-batch is split across workers, and a recomputed share or a
resumed run sees exactly the tasks it saw before.
"""

from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

TRAIN, EVAL = 0, 1  # streams: training tasks and held-out evaluation tasks never share keys
VALID = 2  # validation tasks, which a sweep selects on, so the test tasks never tune anything
STREAMS = {"train": TRAIN, "val": VALID, "test": EVAL}  # the stream each split's tasks are drawn from
NOISE = 3  # the first spawn key of the noise a learner draws for a task, apart from every stream of examples


@dataclass(frozen=True)
class TaskShape:
    """The ``task:`` section of a config: ``ways`` (classification), ``shots`` and ``queries`` per class (per
    task for regression; for RL, ``shots`` trajectories of ``horizon`` steps per batch of rollouts)."""

    ways: int = 5
    shots: int = 10
    queries: int = 10
    horizon: int = 100


def task_rng(seed: int, stream: int, step: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(stream, step, index)))


@contextmanager
def seeded_noise(device, seed: int, *key: int):
    """Torch's default generator (the CPU's, and ``device``'s if a GPU) seeded from ``(seed, *key)``, then restored.

    Learners that draw noise (``Algorithm.draws_noise``) run each task inside this, keyed like the task's examples.
    """
    device = torch.device(device)
    state = np.random.SeedSequence(entropy=seed, spawn_key=(NOISE, *key)).generate_state(1, dtype=np.uint64)[0]
    gpus = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        torch.manual_seed(int(state) >> 1)
        yield


class Task(NamedTuple):
    """One episode; a NamedTuple so ``torch.func.vmap`` can batch a stack of them."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def to(self, device) -> "Task":
        return Task(*(t.to(device, non_blocking=True) for t in self))


def stack(tasks: list[Task]) -> Task:
    """Tasks of one shape as a single batched task (leading task dimension), for ``vmap``."""
    return type(tasks[0])(*(torch.stack(parts) for parts in zip(*tasks, strict=True)))


class SinusoidTasks:
    """y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5] (Finn et al. 2017)."""

    def __init__(self, shots: int, queries: int):
        self.shots, self.queries = shots, queries

    def sample(self, rng: np.random.Generator) -> Task:
        amplitude = rng.uniform(0.1, 5.0)
        phase = rng.uniform(0.0, np.pi)
        x = rng.uniform(-5.0, 5.0, size=(self.shots + self.queries, 1)).astype(np.float32)
        y = (amplitude * np.sin(x - phase)).astype(np.float32)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        return Task(x[: self.shots], y[: self.shots], x[self.shots :], y[self.shots :])


class ClassificationTasks:
    """N-way K-shot episodes drawn from images shaped (classes, samples, H, W).

    The image array may be a read-only view into shared memory: sampling only
    gathers from it, so the copy made here is one task's worth of pixels.
    """

    def __init__(self, images: np.ndarray, ways: int, shots: int, queries: int):
        classes, samples = images.shape[:2]
        if ways > classes:
            raise ValueError(f"task.ways: {ways} ways but the split has only {classes} classes")
        if shots + queries > samples:
            raise ValueError(f"task.shots + task.queries: {shots}+{queries} exceeds the {samples} samples per class")
        self.images, self.ways, self.shots, self.queries = images, ways, shots, queries

    def sample(self, rng: np.random.Generator) -> Task:
        classes = rng.choice(self.images.shape[0], size=self.ways, replace=False)
        picks = np.stack([rng.choice(self.images.shape[1], size=self.shots + self.queries, replace=False) for _ in classes])
        episode = torch.from_numpy(np.ascontiguousarray(self.images[classes[:, None], picks], dtype=np.float32))
        labels = torch.arange(self.ways).unsqueeze(1)
        support, query = episode[:, : self.shots], episode[:, self.shots :]
        return Task(
            support.flatten(0, 1),
            labels.expand(-1, self.shots).flatten(),
            query.flatten(0, 1),
            labels.expand(-1, self.queries).flatten(),
        )
