"""CUB-200-2011 (Wah et al. 2011): 200 bird species, 11,788 photographs, in Chen et al.'s 100/50/50 class split.

``data.source`` is ``CUB_200_2011.tgz`` or the folder it unpacks to; the images are ``CUB_200_2011/images/<class>/*.jpg``.
Whole photographs are resized (no bounding-box crop), as Chen et al. (2019) use them.
"""

import tarfile
from pathlib import Path, PurePosixPath

from data.files import IMAGE_BYTES, ArchiveBudget, tar_member
from data.omniglot import decode
from data.published import IMAGENET_STATS, PUBLISHED, check_classes, class_lists, register_colour_set
from data.registry import Classes, DataConfig
from data.sources import DataError
from data.stream import Encoded


def images(path: Path, size: int):
    """(class, image) of every image under an ``images/<class>/`` folder: from the unpacked folder, each file still
    encoded (decoded in batches as its split is written); from the .tgz, read front to back once and decoded as read."""
    if path.is_dir():
        root = next((p for p in (path / "CUB_200_2011" / "images", path / "images") if p.is_dir()), None)
        if root is None:
            raise DataError(f"{path}: no images/ folder (expected CUB_200_2011.tgz or the CUB_200_2011 folder it unpacks to)")
        for file in sorted(root.glob("*/*")):
            if file.is_file():
                yield file.parent.name, Encoded(str(path), file.relative_to(path).as_posix(), size, colour=True)
        return
    budget = ArchiveBudget(path)
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:  # streamed: the archive is read once, front to back
                budget.spend(member.size)
                name = PurePosixPath(member.name)
                if member.isfile() and len(name.parts) >= 3 and name.parts[-3] == "images":
                    raw = tar_member(path, archive, member, IMAGE_BYTES)
                    yield name.parts[-2], decode(raw, size, f"{path}: {member.name}", colour=True)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{path}: not a readable .tgz, or truncated ({type(e).__name__}: {e})") from None


def read(path: Path, data: DataConfig) -> Classes:
    lists = class_lists("cub")
    split_of = {label: split for split in PUBLISHED for label in lists[split]}
    found: dict[str, list] = {}
    for label, image in images(path, data.image_size):
        found.setdefault(label, []).append(image)
    if not found:
        raise DataError(f"{path}: no images found (expected CUB_200_2011/images/<class>/*.jpg)")
    check_classes(found, list(split_of), str(path), "train + val + test")
    return {(split_of[label], label): found[label] for label in sorted(found)}


register_colour_set(
    "cub",
    "200 bird species, 11,788 photographs (Wah et al. 2011), Chen et al.'s 100/50/50 class split",
    read,
    IMAGENET_STATS,
    "CUB_200_2011.tgz, or the folder it unpacks to",
)
