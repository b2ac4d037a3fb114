"""Small stand-ins for the standard benchmarks' files, each in its set's own format: the published class names and
the real file names, keys, dtypes and folder layout, with two tiny images per class.

Each class is one colour, each image that colour with its own noise, all drawn from fixed seeds.
"""

import io
import json
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = Path(__file__).resolve().parents[1] / "data" / "splits"
PER_CLASS = 2
SIDE = 12  # the real sets' images are 84x84 (32x32 for CIFAR); the readers resize whatever they find


def lists(name: str) -> dict[str, list[str]]:
    published = json.loads((SPLITS / f"{name}.json").read_text())
    return {split: published[split] for split in ("train", "val", "test")}


def image(label: str, index: int, side: int = SIDE) -> np.ndarray:
    """An H x W x 3 uint8 image: the class's colour plus this image's noise."""
    rng = np.random.default_rng([zlib.crc32(label.encode()), index])
    base = np.random.default_rng(zlib.crc32(label.encode())).integers(30, 226, size=3)
    return np.clip(base + rng.integers(-25, 26, size=(side, side, 3)), 0, 255).astype(np.uint8)


def encoded(pixels: np.ndarray, format: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=format)
    return out.getvalue()


def tar_gz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return path


def mini_imagenet_folder(root: Path) -> Path:
    """``images/`` with ``train.csv``, ``val.csv`` and ``test.csv`` (``filename,label``), as Ravi & Larochelle share it."""
    (root / "images").mkdir(parents=True)
    for split, labels in lists("mini_imagenet").items():
        rows = ["filename,label"]
        for label in labels:
            for i in range(PER_CLASS):
                name = f"{label}{i:08d}.jpg"
                (root / "images" / name).write_bytes(encoded(image(label, i), "JPEG"))
                rows.append(f"{name},{label}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def mini_imagenet_pickles(root: Path, per_class: int = PER_CLASS, side: int = SIDE) -> Path:
    """``mini-imagenet-cache-{train,validation,test}.pkl``: ``image_data`` N x H x W x 3 uint8 and ``class_dict``."""
    root.mkdir(parents=True)
    for split, labels in lists("mini_imagenet").items():
        images = np.stack([image(label, i, side) for label in labels for i in range(per_class)])
        class_dict = {label: list(range(c * per_class, (c + 1) * per_class)) for c, label in enumerate(labels)}
        name = {"train": "train", "val": "validation", "test": "test"}[split]
        (root / f"mini-imagenet-cache-{name}.pkl").write_bytes(pickle.dumps({"image_data": images, "class_dict": class_dict}))
    return root


def tiered_imagenet(root: Path) -> Path:
    """``<split>_images_png.pkl`` (PNG bytes as uint8 arrays) and ``<split>_labels.pkl`` (``label_specific``...)."""
    root.mkdir(parents=True)
    for split, labels in lists("tiered_imagenet").items():
        pngs = [np.frombuffer(encoded(image(label, i), "PNG"), np.uint8) for label in labels for i in range(PER_CLASS)]
        index = np.repeat(np.arange(len(labels)), PER_CLASS)
        meta = {"label_specific": index, "label_general": index // 10, "label_specific_str": labels, "label_general_str": []}
        (root / f"{split}_images_png.pkl").write_bytes(pickle.dumps(pngs))
        (root / f"{split}_labels.pkl").write_bytes(pickle.dumps(meta))
    return root


def cifar100_archive(root: Path) -> Path:
    """The official archive's layout, ``cifar-100-python/{train,test,meta}``: pickles with bytes keys, as Python 2
    wrote them. Not under the archive's official name, which is checked against the official md5 by name."""
    root.mkdir(parents=True)
    names = sorted(label for split in lists("cifar_fs").values() for label in split)
    files = {"cifar-100-python/meta": pickle.dumps({b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": []})}
    for part, first in (("train", 0), ("test", 1)):  # an image of each class in each file
        pixels = np.stack([image(name, first, 32).transpose(2, 0, 1).reshape(-1) for name in names])
        files[f"cifar-100-python/{part}"] = pickle.dumps(
            {b"data": pixels, b"fine_labels": list(range(len(names))), b"coarse_labels": [0] * len(names)}
        )
    return tar_gz(root / "cifar-100-standin.tar.gz", files)


def cub_archive(root: Path) -> Path:
    """``CUB_200_2011.tgz`` with ``CUB_200_2011/images/<class>/<name>.jpg``."""
    root.mkdir(parents=True)
    names = sorted(label for split in lists("cub").values() for label in split)
    files = {"CUB_200_2011/classes.txt": "".join(f"{i} {n}\n" for i, n in enumerate(names, 1)).encode()}
    for name in names:
        for i in range(PER_CLASS):
            files[f"CUB_200_2011/images/{name}/{name.split('.')[1]}_{i:04d}.jpg"] = encoded(image(name, i), "JPEG")
    return tar_gz(root / "CUB_200_2011.tgz", files)


# data.name -> how to make a stand-in for it under a folder, for each form the set is shared in
FORMATS = {
    "mini_imagenet-folder": ("mini_imagenet", mini_imagenet_folder),
    "mini_imagenet-pickles": ("mini_imagenet", mini_imagenet_pickles),
    "tiered_imagenet": ("tiered_imagenet", tiered_imagenet),
    "cifar_fs": ("cifar_fs", cifar100_archive),
    "fc100": ("fc100", cifar100_archive),
    "cub": ("cub", cub_archive),
}
