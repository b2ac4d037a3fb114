"""CIFAR-FS (Bertinetto et al. 2019, 64/16/20 classes) and FC100 (Oreshkin et al. 2018, 60/20/20 classes split by
superclass), both from the official CIFAR-100 python archive: 100 classes of 600 32x32 images.

``data.source`` is ``cifar-100-python`` (downloaded once from its home and checked against its md5), the
``cifar-100-python.tar.gz`` archive, or the folder it unpacks to (``train``, ``test`` and ``meta`` pickles).
"""

import io
import tarfile
from pathlib import Path

import numpy as np

from data.files import ArchiveBudget, folder_file, tar_member
from data.pickled import load_pickle
from data.published import CIFAR_STATS, PUBLISHED, check_classes, class_lists, keys_of, register_colour_set
from data.registry import Classes, DataConfig
from data.sources import DataError
from data.stream import Pixels

MEMBERS = ("train", "test", "meta")
MEMBER_BYTES = 1 << 30  # the official train pickle is 155 MB


def members(path: Path) -> dict[str, bytes]:
    """The archive's ``train``, ``test`` and ``meta`` pickles, from the .tar.gz or its unpacked folder."""
    if path.is_dir():
        folder = path / "cifar-100-python" if (path / "cifar-100-python").is_dir() else path
        missing = [name for name in MEMBERS if not (folder / name).is_file()]
        if missing:
            raise DataError(f"{folder}: missing {', '.join(missing)} (expected CIFAR-100's unpacked cifar-100-python folder)")
        return {name: folder_file(path, folder / name, MEMBER_BYTES) for name in MEMBERS}
    budget = ArchiveBudget(path)
    try:
        with tarfile.open(path, "r:gz") as archive:
            found = {}
            for member in archive:
                budget.spend(member.size)
                if member.isfile() and Path(member.name).parent.name == "cifar-100-python":
                    found[Path(member.name).name] = member
            missing = [name for name in MEMBERS if name not in found]
            if missing:
                raise DataError(f"{path}: no cifar-100-python/{missing[0]} in the archive (expected the official cifar-100-python.tar.gz)")
            return {name: tar_member(path, archive, found[name], MEMBER_BYTES) for name in MEMBERS}
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{path}: not a readable .tar.gz, or truncated ({type(e).__name__}: {e})") from None


def read_cifar100(path: Path, size: int) -> dict[str, list[Pixels]]:
    """Every image of CIFAR-100's train and test files, by fine class name, still in the files' pixel arrays."""
    raw = members(path)
    meta = load_pickle(io.BytesIO(raw.pop("meta")), f"{path}: meta", encoding="bytes")
    keys_of(meta, (b"fine_label_names",), f"{path}: meta")
    names = [name.decode() for name in meta[b"fine_label_names"]]
    classes: dict[str, list[Pixels]] = {name: [] for name in names}
    for part in ("train", "test"):
        content = load_pickle(io.BytesIO(raw.pop(part)), f"{path}: {part}", encoding="bytes")
        keys_of(content, (b"data", b"fine_labels"), f"{path}: {part}")
        pixels = np.asarray(content[b"data"], dtype=np.uint8)
        if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32 or len(pixels) != len(content[b"fine_labels"]):
            raise DataError(f"{path}: {part} must hold N x 3072 pixels and N fine labels, got {pixels.shape} and {len(content[b'fine_labels'])}")
        images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # a view: each image is resized as its batch is written
        for row, label in enumerate(content[b"fine_labels"]):
            classes[names[label]].append(Pixels(images, row, size))
    return classes


def reader(name: str):
    """The reader of the published split ``name`` (``cifar_fs`` or ``fc100``) of CIFAR-100's classes."""

    def read(path: Path, data: DataConfig) -> Classes:
        every = read_cifar100(path, data.image_size)
        lists = class_lists(name)
        check_classes(every, [label for split in PUBLISHED for label in lists[split]], str(path), "train + val + test")
        return {(split, label): every[label] for split in PUBLISHED for label in lists[split]}

    return read


SOURCES = "cifar-100-python (the official archive, downloaded once and verified), its .tar.gz, or the folder it unpacks to"
register_colour_set(
    "cifar_fs", "CIFAR-100's 100 classes of 600 32x32 images, Bertinetto et al.'s random 64/16/20 split", reader("cifar_fs"), CIFAR_STATS, SOURCES
)
register_colour_set(
    "fc100", "CIFAR-100 split by superclass (Oreshkin et al. 2018): 12/4/4 superclasses, 60/20/20 classes", reader("fc100"), CIFAR_STATS, SOURCES
)
