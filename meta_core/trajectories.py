"""Lifelong learning's tasks: a stream of classes, one class after another, learned one example at a time.

A task's support set is the stream, in order (class after class, ``shots`` examples each); its query set is what
the learner is scored on after one pass over it. Labels are the classes' indices in their split, so a learner
meets a class under the same label in every trajectory, and the examples it must remember (the ``remember``
batch of other classes) keep their own. Drawn, like every task, from ``meta_core.tasks.task_rng``'s generator.
"""

from collections.abc import Mapping

import numpy as np
import torch

from meta_core.tasks import Stats, Task, TaskShape, as_inputs, crop_and_flip


class TrajectoryTasks:
    """Streams of ``classes`` classes drawn from examples shaped (classes, samples, ...).

    Meta-training: each class's ``shots`` examples in the stream, and as query ``queries`` new examples of each,
    the stream itself again where ``replay`` (ANML's outer loss), and ``remember`` examples of other classes.
    Meta-testing: each class's ``shots`` (training) examples in the stream and ``queries`` held-out ones as query.
    """

    def __init__(self, images: np.ndarray, classes: int, shots: int, queries: int, remember: int = 0, replay: bool = False,
                 stats: Stats | None = None, augment: bool = False):  # fmt: skip
        available, samples = images.shape[:2]
        if classes > available:
            raise ValueError(f"{classes} classes to a stream but the split has only {available}")
        if remember and classes == available:
            raise ValueError(f"algorithm.remember: no other classes to remember, the stream takes all {available} of the split")
        if shots + queries > samples:
            raise ValueError(f"{shots}+{queries} examples per class exceed the {samples} samples per class")
        self.images, self.classes, self.shots, self.queries = images, classes, shots, queries
        self.remember, self.replay, self.stats, self.augment = remember, replay, stats, augment

    def sample(self, rng: np.random.Generator) -> Task:
        available, samples = self.images.shape[:2]
        classes = rng.choice(available, size=self.classes, replace=False)
        picks = np.stack([rng.choice(samples, size=self.shots + self.queries, replace=False) for _ in classes])
        others = np.setdiff1d(np.arange(available), classes)
        remembered = rng.choice(others, size=self.remember) if self.remember else others[:0]
        remembered_picks = rng.integers(0, samples, size=len(remembered))
        examples = self.images[classes[:, None], picks]
        stream, new = examples[:, : self.shots].reshape(-1, *examples.shape[2:]), examples[:, self.shots :].reshape(-1, *examples.shape[2:])
        stream_y, new_y = np.repeat(classes, self.shots), np.repeat(classes, self.queries)
        query = [new, *([stream] if self.replay else []), self.images[remembered, remembered_picks]]
        query_y = [new_y, *([stream_y] if self.replay else []), remembered]
        x, y = self.inputs(stream, rng), torch.from_numpy(stream_y).long()
        return Task(x, y, self.inputs(np.concatenate(query), rng), torch.from_numpy(np.concatenate(query_y)).long())

    def inputs(self, examples: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        return as_inputs(crop_and_flip(examples, rng) if self.augment else examples, self.stats)


def trajectory_tasks(examples: np.ndarray, split: str, *, shape: TaskShape, adapt_steps: int, options: Mapping, stats: Stats | None,
                     augment: bool) -> TrajectoryTasks:  # fmt: skip
    """A split's task source for a lifelong learner (``AlgorithmSpec.lifelong``): trajectories of ``task.ways`` classes,
    ``task.shots`` examples each, for training (augmented where ``data.augment``); streams of the most classes the
    evaluation learns (``adapt_steps``), ``algorithm.test_shots`` training and ``algorithm.test_queries`` held-out
    examples each, for testing and validation."""
    if len(examples) > options["classes"]:
        raise ValueError(f"algorithm.classes: {options['classes']} output rows, but the {split} split has {len(examples)} classes (labels)")
    if split == "train":
        return TrajectoryTasks(examples, shape.ways, shape.shots, shape.queries, options["remember"], options["replay"], stats, augment)
    try:
        return TrajectoryTasks(examples, adapt_steps, options["test_shots"], options["test_queries"], stats=stats)
    except ValueError as error:
        raise ValueError(f"eval.steps, algorithm.test_shots/test_queries: the {split} split: {error}") from None
