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

TRAIN, TEST = 0, 1  # streams: training tasks and held-out test tasks never share keys
VALID = 2  # validation tasks, which a sweep selects on, so the test tasks never tune anything
STREAMS = {"train": TRAIN, "val": VALID, "test": TEST}  # the stream each split's tasks are drawn from
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


Stats = tuple[tuple[float, ...], tuple[float, ...]]  # per channel: the mean and standard deviation of pixels in [0, 1]


def normalized(pixels: torch.Tensor, stats: Stats | None) -> torch.Tensor:
    """Pixels in [0, 1] as a model sees them: less the data set's mean and over its deviation, per channel (dim -3)."""
    if stats is None:
        return pixels
    mean, std = (torch.tensor(s, dtype=pixels.dtype).view(-1, 1, 1) for s in stats)
    return (pixels - mean) / std


def as_inputs(examples: np.ndarray, stats: Stats | None = None) -> torch.Tensor:
    """Stored examples as model inputs: images (uint8) scaled to [0, 1] and ``normalized``; features as they are."""
    x = torch.from_numpy(np.ascontiguousarray(examples))
    return normalized(x.float() / 255, stats) if x.dtype == torch.uint8 else x.float()


def crop_and_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The standard train-time augmentation: each image padded by an eighth of its side with zeros, cropped back
    at a random offset, and mirrored left to right half the time; drawn from the task's generator."""
    height, width = images.shape[-2:]
    pad = max(1, height // 8)
    flat = images.reshape(-1, *images.shape[-3:]) if images.ndim == 5 else images.reshape(-1, 1, height, width)  # colour or grey
    padded = np.pad(flat, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    offsets = rng.integers(0, 2 * pad + 1, size=(len(flat), 2))
    flips = rng.random(len(flat)) < 0.5
    out = np.empty_like(flat)
    for i, ((top, left), flip) in enumerate(zip(offsets, flips, strict=True)):
        crop = padded[i, :, top : top + height, left : left + width]
        out[i] = crop[..., ::-1] if flip else crop
    return out.reshape(images.shape)


class ClassificationTasks:
    """N-way K-shot episodes drawn from examples shaped (classes, samples, ...): images as uint8, or features.

    The array may be a read-only view into shared memory: sampling only
    gathers from it, so the copy made here is one task's worth of pixels.
    Images are scaled and normalised (``as_inputs``) per task, after the
    optional augmentation (``crop_and_flip``), which only training tasks take.
    """

    def __init__(self, images: np.ndarray, ways: int, shots: int, queries: int, stats: Stats | None = None, augment: bool = False):
        classes, samples = images.shape[:2]
        if ways > classes:
            raise ValueError(f"task.ways: {ways} ways but the split has only {classes} classes")
        if shots + queries > samples:
            raise ValueError(f"task.shots + task.queries: {shots}+{queries} exceeds the {samples} samples per class")
        self.images, self.ways, self.shots, self.queries = images, ways, shots, queries
        self.stats, self.augment = stats, augment

    def sample(self, rng: np.random.Generator) -> Task:
        classes = rng.choice(self.images.shape[0], size=self.ways, replace=False)
        picks = np.stack([rng.choice(self.images.shape[1], size=self.shots + self.queries, replace=False) for _ in classes])
        examples = self.images[classes[:, None], picks]
        episode = as_inputs(crop_and_flip(examples, rng) if self.augment else examples, self.stats)
        labels = torch.arange(self.ways).unsqueeze(1)
        support, query = episode[:, : self.shots], episode[:, self.shots :]
        return Task(
            support.flatten(0, 1),
            labels.expand(-1, self.shots).flatten(),
            query.flatten(0, 1),
            labels.expand(-1, self.queries).flatten(),
        )
