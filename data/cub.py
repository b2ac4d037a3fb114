"""CUB-200-2011 (Wah et al. 2011): 200 bird species, 11,788 photographs, in Chen et al.'s 100/50/50 class split.

``data.source`` is ``CUB_200_2011.tgz`` (unpacked once into the download cache) or the folder it unpacks to; the
images are ``CUB_200_2011/images/<class>/*.jpg``.
Whole photographs are resized (no bounding-box crop), as Chen et al. (2019) use them.
"""

import shutil
import tarfile
from pathlib import Path, PurePosixPath

from data.dataset import cache_dir
from data.files import IMAGE_BYTES, ArchiveBudget, tar_member
from data.published import IMAGENET_STATS, PUBLISHED, check_classes, class_lists, register_colour_set
from data.registry import Classes, DataConfig
from data.sources import DataError, file_digest
from data.stream import Encoded


def images(path: Path, size: int):
    """(class, image) of every image under the unpacked folder's ``images/<class>/``, each file still encoded (decoded
    in batches as its split is written)."""
    root = next((p for p in (path / "CUB_200_2011" / "images", path / "images") if p.is_dir()), None)
    if root is None:
        raise DataError(f"{path}: no images/ folder (expected CUB_200_2011.tgz or the CUB_200_2011 folder it unpacks to)")
    for file in sorted(root.glob("*/*")):
        if file.is_file():
            yield file.parent.name, Encoded(str(path), file.relative_to(path).as_posix(), size, colour=True)


def unpacked(path: Path, data: DataConfig) -> Path:
    """The .tgz's images unpacked once into the download cache (``<name>.unpacked-<sha256>``), read front to back,
    member by member and each bounded, so that no process holds the archive's images; then read as the folder is,
    and kept for the archive's later preparations (another image size)."""
    target = cache_dir(data) / "downloads" / f"{path.name}.unpacked-{file_digest(path)[:16]}"
    if target.is_dir():
        return target
    part = target.with_name(target.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    budget = ArchiveBudget(path)
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:  # streamed: the archive is read once, front to back
                budget.spend(member.size)
                name = PurePosixPath(member.name)
                if member.isfile() and len(name.parts) >= 3 and name.parts[-3] == "images":
                    if {".", ".."} & set(name.parts[-2:]):
                        raise DataError(f"{path}: {member.name}: a member name with '.' or '..' (expected images/<class>/<file>)")
                    file = part / "images" / name.parts[-2] / name.parts[-1]
                    file.parent.mkdir(parents=True, exist_ok=True)
                    file.write_bytes(tar_member(path, archive, member, IMAGE_BYTES))
        part.rename(target)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{path}: not a readable .tgz, or truncated ({type(e).__name__}: {e})") from None
    finally:
        shutil.rmtree(part, ignore_errors=True)  # whatever stopped it half-way (gone once renamed)
    return target


def read(path: Path, data: DataConfig) -> Classes:
    lists = class_lists("cub")
    split_of = {label: split for split in PUBLISHED for label in lists[split]}
    found: dict[str, list] = {}
    for label, image in images(path if path.is_dir() else unpacked(path, data), data.image_size):
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
