"""What the standard few-shot benchmarks share: their published class lists, colour images, and how a copy is read.

Each set's published split lives in ``data/splits/<set>.json`` (``train``, ``val`` and ``test`` class lists, and
the ``source`` they were taken from). A reader returns ``Classes`` keyed by (split, class); a copy whose classes
are not the published lists' is refused, naming the file.
"""

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from data.omniglot import stored
from data.registry import Classes, DataConfig, DatasetSpec, classification_tasks, no_feature_columns, register_dataset, ways
from data.sources import DataError
from meta_core.tasks import Stats

SPLITS_DIR = Path(__file__).parent / "splits"
PUBLISHED = ("train", "val", "test")
# Per-channel pixel statistics in [0, 1], as MetaOptNet (Lee et al. 2019) normalises mini/tieredImageNet and CIFAR,
# and as torchvision's ImageNet models (and Chen et al. 2019 on CUB) normalise photographs.
MINI_IMAGENET_STATS: Stats = ((120.39586422 / 255, 115.59361427 / 255, 104.54012653 / 255), (70.68188272 / 255, 68.27635443 / 255, 72.54505529 / 255))
CIFAR_STATS: Stats = ((129.37731888 / 255, 124.10583864 / 255, 112.47758569 / 255), (68.20947949 / 255, 65.43124043 / 255, 70.45866994 / 255))
IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def class_lists(name: str) -> dict[str, list[str]]:
    """The published split of ``name``: each split's classes."""
    lists = json.loads((SPLITS_DIR / f"{name}.json").read_text())
    return {split: lists[split] for split in PUBLISHED}


def check_classes(found: Iterable[str], expected: list[str], where: str, split: str) -> None:
    """A copy's classes must be exactly the published list's."""
    found = set(found)
    missing, extra = sorted(set(expected) - found), sorted(found - set(expected))
    if missing or extra:
        raise DataError(
            f"{where}: its classes do not match the published {split} list ({len(missing)} missing, e.g. {missing[:2]}; "
            f"{len(extra)} not in it, e.g. {extra[:2]})"
        )


def colour(pixels: np.ndarray, size: int) -> np.ndarray:
    """An RGB image array (H, W, 3 uint8) as the cache keeps it (``stored``)."""
    return stored(Image.fromarray(pixels), size, colour=True)


def keys_of(content, expected: tuple, where: str) -> None:
    if not isinstance(content, dict) or not set(expected) <= set(content):
        found = sorted(map(str, content)) if isinstance(content, dict) else type(content).__name__
        raise DataError(f"{where}: expected a dict with keys {list(map(str, expected))}, found {found}")


def keeps_published_split(data: DataConfig) -> str | None:
    """The check of a set with a published split: no split is carved out of it, and it has no feature columns."""
    if data.val_size:
        return f"config key 'data.val_size': {data.name} keeps its published train/val/test split; leave data.val_size at 0"
    return no_feature_columns(data)


def register_colour_set(name: str, summary: str, read: Callable[[Path, DataConfig], Classes], stats: Stats, sources: str) -> DatasetSpec:
    """A benchmark of colour images with a published split: conv4 by default, normalised by ``stats``."""
    return register_dataset(
        DatasetSpec(
            name,
            "classification",
            summary,
            tasks=classification_tasks,
            outputs=ways,
            example=lambda data: ("images", (3, data.image_size, data.image_size)),
            default_model=lambda data: "conv4",
            read=read,
            check=keeps_published_split,
            sources=sources,
            fixed_splits=True,
            stats=stats,
        )
    )
