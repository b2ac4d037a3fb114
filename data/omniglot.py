"""Omniglot-layout images (``<alphabet>/<character>/<drawing>.png``) from official zips or folders."""

import io
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageFile

from data import jpeg
from data.files import IMAGE_BYTES, ArchiveBudget, bounded, inside
from data.registry import Classes, DataConfig, DatasetSpec, classification_tasks, register_dataset, ways
from data.sources import DataError
from data.stream import Encoded


def stored(image: Image.Image, size: int, colour: bool = False) -> np.ndarray:
    """An image as the cache keeps it: ``size`` x ``size`` uint8, resized once, antialiased; grayscale (H, W), or with
    ``colour`` RGB channels first (3, H, W)."""
    pixels = np.asarray(image.convert("RGB" if colour else "L").resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)) if colour else pixels


def decode(raw: bytes, size: int, where: str, invert: bool = False, colour: bool = False) -> np.ndarray:
    """Encoded image bytes as the cache keeps them (``stored``); ``invert`` turns black-on-white drawings into
    strokes at 255 on a 0 background.

    Whatever is not a whole image is refused: a truncated file, a JPEG whose compressed data is corrupt
    (``data.jpeg``), and anything PIL warns about while reading it (a decompression bomb, corrupt chunks), as its
    warnings are errors here. Every image is refused while ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set, as that
    setting lets truncated files through."""
    try:
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            raise OSError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set, so truncated images would decode; unset it")
        if raw.startswith(b"\xff\xd8"):
            jpeg.check(raw)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            image = Image.open(io.BytesIO(raw))
            image.load()
        with image:
            pixels = stored(image, size, colour)
    except Exception as e:  # PIL raises many types for corrupt or non-image bytes
        raise DataError(f"{where}: not a readable image ({type(e).__name__}: {e})") from None
    return 255 - pixels if invert else pixels


def zip_entries(path: Path, archive: zipfile.ZipFile) -> Iterator[tuple[PurePosixPath, str | None]]:
    """Each entry's path and its name in the archive (``None`` for a folder), refusing entries that would land outside
    the archive's folder, and an archive whose entries decode to far more than its size, before any is read."""
    budget = ArchiveBudget(path)
    for info in archive.infolist():
        name = PurePosixPath(info.filename.replace("\\", "/"))
        if name.is_absolute() or ".." in name.parts or ":" in name.parts[0]:
            raise DataError(f"{path}: entry {info.filename!r} would land outside the target folder")
        budget.spend(info.file_size)
    for info in archive.infolist():
        yield PurePosixPath(info.filename.replace("\\", "/")), None if info.is_dir() else info.filename


def zip_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """One image's bytes, at most ``IMAGE_BYTES`` whatever its header says; a corrupt entry is one line."""
    try:
        with archive.open(info) as member:
            return bounded(member, info.file_size, IMAGE_BYTES, f"{path}/{info.filename}")
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        raise DataError(f"{path}/{info.filename}: not a readable zip entry ({type(e).__name__}: {e})") from None


def folder_entries(path: Path) -> Iterator[tuple[PurePosixPath, str | None]]:
    """Each file's path, twice (``None`` for a folder); nothing may resolve outside ``path``."""
    for item in sorted(path.rglob("*")):
        inside(path, item)
        name = item.relative_to(path).as_posix()
        yield PurePosixPath(name), None if item.is_dir() else name


def read(path: Path, data: DataConfig) -> Classes:
    """Every character under ``path`` (a zip or a folder), keyed by (alphabet, character), each drawing still
    encoded, to become a ``data.image_size`` square where its batch is decoded; every file must be a readable image."""
    size = data.image_size
    if path.is_dir():
        return collect(path, folder_entries(path), size)
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: expected an Omniglot zip or a folder of <alphabet>/<character>/*.png")
    with zipfile.ZipFile(path) as archive:
        return collect(path, zip_entries(path, archive), size)


def collect(path: Path, entries, size: int) -> Classes:
    files, folders = {}, set()
    for name, member in entries:
        if member is None:
            folders.add(name)
        else:
            files[name] = member
    if not files:
        raise DataError(f"{path}: no images found (expected <alphabet>/<character>/*.png)")
    depths = {len(name.parts) for name in files}
    if len(depths) > 1 or depths.pop() < 3:
        raise DataError(f"{path}: images must all sit at <alphabet>/<character>/<image>, found {sorted(files)[0]}")
    classes: Classes = {}
    for name, member in sorted(files.items()):
        key = (name.parts[-3], name.parts[-2])
        classes.setdefault(key, []).append(Encoded(str(path), member, size, invert=True))
    depth = len(next(iter(files)).parts) - 1
    for folder in folders:
        if len(folder.parts) == depth and (folder.parts[-2], folder.parts[-1]) not in classes:
            raise DataError(f"{path}/{folder}: empty class (no images)")
    return classes


register_dataset(
    DatasetSpec(
        "omniglot",
        "classification",
        "handwritten characters of 50 alphabets (Lake et al. 2015), 20 drawings each",
        tasks=classification_tasks,
        outputs=ways,
        example=lambda data: ("images", (data.image_size, data.image_size)),
        default_model=lambda data: "conv4",
        read=read,
        sources="an official set's name (images_background, images_evaluation, images_background_small1/2), a zip, a folder of zips or of <alphabet>/<character>/*.png, a URL",
    )
)
