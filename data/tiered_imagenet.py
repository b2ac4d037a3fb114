"""tieredImageNet (Ren et al. 2018): 608 ImageNet classes under 34 categories, split 351/97/160 by category.

Read from a local copy of the files it is shared as: for each split, ``<split>_images_png.pkl`` (a list of PNG-encoded
images) and ``<split>_labels.pkl`` (``label_specific``: each image's class index, ``label_specific_str``: the class
names). Each images pickle is walked once for where each PNG's bytes lie in it (``data.pickled.byte_spans``), so
reading it holds offsets, not images; the PNGs are read from the pickle and decoded where their batch is, over the
cluster's CPUs from 20,000 images on: about 780,000 images, so preparing takes a while, once.
"""

from pathlib import Path

import numpy as np

from data.files import inside
from data.pickled import byte_spans, load_pickle
from data.published import MINI_IMAGENET_STATS, PUBLISHED, check_classes, class_lists, keys_of, register_colour_set
from data.registry import Classes, DataConfig
from data.sources import DataError
from data.stream import Encoded


def read(path: Path, data: DataConfig) -> Classes:
    if not path.is_dir():
        raise DataError(f"{path}: expected a tieredImageNet folder holding <split>_images_png.pkl and <split>_labels.pkl for train, val and test")
    lists = class_lists("tiered_imagenet")
    classes: Classes = {}
    for split in PUBLISHED:
        images_file, labels_file = path / f"{split}_images_png.pkl", path / f"{split}_labels.pkl"
        for file in (images_file, labels_file):
            if not file.is_file():
                raise DataError(f"{file}: missing (tieredImageNet needs <split>_images_png.pkl and <split>_labels.pkl for train, val and test)")
        with open(inside(path, labels_file), "rb") as stream:
            labels = load_pickle(stream, str(labels_file))
        keys_of(labels, ("label_specific", "label_specific_str"), str(labels_file))
        names, index = list(labels["label_specific_str"]), np.asarray(labels["label_specific"])
        with open(inside(path, images_file), "rb") as stream:
            images = byte_spans(stream, str(images_file))
        if len(images) != len(index):
            raise DataError(f"{images_file}: {len(images)} images but {labels_file.name} labels {len(index)}")
        if len(index) and not (0 <= index.min() and index.max() < len(names)):
            raise DataError(f"{labels_file}: label_specific indexes beyond label_specific_str's {len(names)} names")
        check_classes({names[i] for i in index}, lists[split], str(labels_file), split)
        for row, (label, png) in enumerate(zip(index, images, strict=True)):
            where = {"raw": png} if isinstance(png, bytes) else {"span": png}  # read from the file, unless held as text
            image = Encoded(str(images_file), f"image {row}", data.image_size, colour=True, **where)
            classes.setdefault((split, names[label]), []).append(image)
    return classes


register_colour_set(
    "tiered_imagenet",
    "608 ImageNet classes of about 1,300 84x84 images in 34 categories (Ren et al. 2018), split 351/97/160 by category",
    read,
    MINI_IMAGENET_STATS,
    "a folder holding {train,val,test}_images_png.pkl and {train,val,test}_labels.pkl",
)
