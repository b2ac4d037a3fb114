"""mini-ImageNet (Vinyals et al. 2016) in Ravi & Larochelle's split: 64/16/20 classes of 600 images.

Read from a local copy in either of the two forms it is shared in: the ``images/`` folder with ``train.csv``,
``val.csv`` and ``test.csv`` (``filename,label``), or the pickles ``mini-imagenet-cache-{train,validation,test}.pkl``
(``image_data``: N x 84 x 84 x 3 uint8, ``class_dict``: class -> its rows).
"""

import csv
from pathlib import Path

from data.files import inside
from data.pickled import load_pickle
from data.published import MINI_IMAGENET_STATS, PUBLISHED, check_classes, class_lists, keys_of, register_colour_set
from data.registry import Classes, DataConfig
from data.sources import DataError
from data.stream import Encoded, Pixels

PICKLES = {"train": "mini-imagenet-cache-train.pkl", "val": "mini-imagenet-cache-validation.pkl", "test": "mini-imagenet-cache-test.pkl"}


def read(path: Path, data: DataConfig) -> Classes:
    if not path.is_dir():
        raise DataError(f"{path}: expected a mini-ImageNet folder (images/ with train.csv, val.csv, test.csv; or {', '.join(PICKLES.values())})")
    lists = class_lists("mini_imagenet")
    from_pickles = any((path / name).exists() for name in PICKLES.values())
    classes: Classes = {}
    for split in PUBLISHED:
        read_split = read_pickle if from_pickles else read_csv
        part = read_split(path, split, lists[split], data.image_size)
        classes.update({(split, label): images for label, images in part.items()})
    return classes


def read_csv(folder: Path, split: str, published: list[str], size: int) -> dict[str, list]:
    """One split's images from ``<split>.csv`` (``filename,label``) and the ``images/`` folder, still encoded; its
    classes are checked against the ``published`` list first."""
    listing = folder / f"{split}.csv"
    inside(folder, listing)
    if not listing.is_file():
        raise DataError(f"{listing}: missing (mini-ImageNet's folder form needs images/ with train.csv, val.csv and test.csv)")
    with open(listing, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["filename", "label"]:
        raise DataError(f"{listing}: expected the header 'filename,label', got {','.join(rows[0]) if rows else 'an empty file'}")
    for number, row in enumerate(rows[1:], 2):
        if len(row) != 2:
            raise DataError(f"{listing} line {number}: expected 'filename,label', got {','.join(row)!r}")
    check_classes({label for _, label in rows[1:]}, published, str(listing), split)
    part: dict[str, list] = {}
    for number, row in enumerate(rows[1:], 2):
        image = folder / "images" / row[0]
        inside(folder, image, f"listed in {listing.name} line {number}")
        if not image.is_file():
            raise DataError(f"{image}: missing (listed in {listing.name} line {number})")
        part.setdefault(row[1], []).append(Encoded(str(folder), f"images/{row[0]}", size, colour=True))
    return part


def read_pickle(folder: Path, split: str, published: list[str], size: int) -> dict[str, list]:
    """One split's images from its ``mini-imagenet-cache-*.pkl``; its classes are checked against the ``published``
    list before any image is converted."""
    path = folder / PICKLES[split]
    if not path.is_file():
        raise DataError(f"{path}: missing (mini-ImageNet's pickled form needs {', '.join(PICKLES.values())})")
    with open(inside(folder, path), "rb") as stream:
        content = load_pickle(stream, str(path))
    keys_of(content, ("image_data", "class_dict"), str(path))
    images = content["image_data"]
    if getattr(images, "dtype", None) != "uint8" or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(
            f"{path}: image_data must be an N x H x W x 3 uint8 array, got {getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}"
        )
    check_classes(content["class_dict"], published, str(path), split)
    part = {}
    for label, rows in content["class_dict"].items():
        if not rows or max(rows) >= len(images):
            raise DataError(f"{path}: class_dict['{label}'] lists rows beyond image_data's {len(images)} images")
        part[label] = [Pixels(images, row, size) for row in rows]  # resized as its batch is written
    return part


register_colour_set(
    "mini_imagenet",
    "100 ImageNet classes of 600 84x84 images (Vinyals et al. 2016), Ravi & Larochelle's 64/16/20 split",
    read,
    MINI_IMAGENET_STATS,
    "a folder holding images/ with train.csv, val.csv and test.csv, or mini-imagenet-cache-{train,validation,test}.pkl",
)
