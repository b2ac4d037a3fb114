"""Specs of data sets, gathered by name: what kind of task each makes, what it reads, and what a model sees.

Config validation, the prepare stage, the workers' task sources, serving and tracking read a spec, so a new
data set is one file that registers its ``DatasetSpec`` (``register_dataset``).
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data.stream import Sample
from meta_core.tasks import ClassificationTasks, Stats, TaskShape

# (group, class) -> the class's examples, each an array of one example's shape or an image still encoded
# (``data.stream.Encoded``, decoded in batches as the split is written): what a reader returns.
Classes = dict[tuple[str, str], list[Sample]]


@dataclass(frozen=True)
class DataConfig:
    """The ``data:`` section of a config (pipelines/configs/defaults.yaml says what each key means)."""

    name: str
    source: str | tuple[str, ...] | None = None
    split: str = "group"
    test_size: float | int = 0.25
    val_size: float | int = 0
    rotations: bool = False
    augment: bool = False
    image_size: int = 28
    label_column: str = "label"
    group_column: str | None = None
    image_column: str = "image"
    features: tuple[str, ...] | None = None
    cache_dir: str | None = None
    prepare_cpus: int | None = None
    prepare_memory_mb: int = 1024
    delivery: str = "auto"


@dataclass(frozen=True)
class DatasetSpec:
    """A data set as the pipeline sees it.

    ``kind``: ``regression``, ``classification`` or ``rl`` (a task asks for a value, a class, or actions). ``tasks(shape,
    examples, adapt_steps, data, split)`` is a split's task source (``examples`` is the split's ``(classes, samples, ...)``
    array, or None for tasks drawn from a formula; ``adapt_steps`` the most adaptation steps a task must
    support; ``split`` its name, as only training tasks are augmented). ``example(data)`` is what a model sees of one example: its kind (``images``,
    ``vectors``, ``observations``) and shape; ``outputs(shape)`` how many values the model gives for it (the
    ways, one regression target, the action's size). ``read(path, data)`` turns one ``data.source`` into ``Classes``;
    without it the data set is drawn from a formula and has nothing to prepare. ``default_model(data)`` names
    the model used when ``model.name`` is null. ``check(data)`` returns what is wrong with a ``data:`` section
    for this data set, or None. ``sources`` says what ``data.source`` may name. ``fixed_splits``: the reader puts
    each class in its published split (the class key's group is ``train``, ``val`` or ``test``), instead of the
    split being drawn by ``data.split``. ``stats``: per channel, the mean and deviation its images are normalised by.
    """

    name: str
    kind: str
    summary: str
    tasks: Callable[..., Any]
    example: Callable[[DataConfig], tuple[str, tuple[int, ...]]]
    outputs: Callable[[TaskShape], int]
    default_model: Callable[[DataConfig], str]
    read: Callable[[Path, DataConfig], Classes] | None = None
    check: Callable[[DataConfig], str | None] = field(default_factory=lambda: no_feature_columns)
    sources: str = ""
    fixed_splits: bool = False
    stats: Stats | None = None

    @property
    def generated(self) -> bool:
        return self.read is None


def no_feature_columns(data: DataConfig) -> str | None:
    """The check of every data set but a user's table: feature columns are a table's."""
    return f"config key 'data.features': only a table has feature columns, data.name is {data.name!r}" if data.features else None


def ways(shape: TaskShape) -> int:
    """A classifier's outputs: one logit per way."""
    return shape.ways


def classification_tasks(shape: TaskShape, examples: np.ndarray, adapt_steps: int, data: DataConfig, split: str) -> ClassificationTasks:
    """N-way K-shot episodes from a prepared split, for every classification data set; augmented for training."""
    augment = data.augment and split == "train"
    return ClassificationTasks(examples, shape.ways, shape.shots, shape.queries, DATASETS[data.name].stats, augment)


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec
