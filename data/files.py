"""Raw bytes read defensively: every size bounded before it is read, and a folder source confined to its folder.

An archive member's size comes from its header, which a hostile archive can make up: a few hundred kilobytes of
deflate can expand to gigabytes. So a member is refused when its header says it is too large, and read with a
bounded read that stops one byte past the declared size, which catches a header that understates it; an archive whose
members add up to far more than the archive itself is refused before its first member is read.
"""

import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO

from data.sources import DataError

MiB = 1 << 20
IMAGE_BYTES = 64 * MiB  # one encoded image: few-shot images are kilobytes, a full-size photograph a few MiB
EXPANSION = 100  # images and pixel pickles barely compress; a deflate bomb expands about a thousandfold
EXPANSION_FLOOR = 1 << 30  # a small archive may always hold this much


def bounded(stream: BinaryIO, declared: int, limit: int, where: str) -> bytes:
    """The bytes of ``stream``, whose header ``declared`` its size: refused before reading when that is over ``limit``,
    and when the stream holds more than it declared (the read stops one byte past it)."""
    if declared > limit:
        raise DataError(f"{where}: {declared:,} bytes, more than the {limit:,} this reader accepts")
    raw = stream.read(declared + 1)
    if len(raw) > declared:
        raise DataError(f"{where}: holds more than the {declared:,} bytes its header says")
    return raw


class ArchiveBudget:
    """What one archive may decode to in all: ``EXPANSION`` times its size on disk, and at least ``EXPANSION_FLOOR``."""

    def __init__(self, path: Path):
        self.path = path
        self.limit = max(EXPANSION * path.stat().st_size, EXPANSION_FLOOR)
        self.spent = 0

    def spend(self, size: int) -> None:
        self.spent += size
        if self.spent > self.limit:
            raise DataError(
                f"{self.path}: its members decode to more than {self.limit:,} bytes, over {EXPANSION} times the archive's size "
                "(a compression bomb, or not an archive of images)"
            )


def inside(folder: Path, path: Path, note: str = "") -> Path:
    """``path`` resolved (symlinks followed), refused unless it lies inside ``folder``: a folder source reads only its
    own files. ``note`` says where the path came from."""
    resolved, root = path.resolve(), folder.resolve()
    if not resolved.is_relative_to(root):
        raise DataError(
            f"{path}: resolves to {resolved}, outside the source folder {root} (a folder source reads only files inside it{'; ' + note if note else ''})"
        )
    return resolved


def folder_file(folder: Path, path: Path, limit: int = IMAGE_BYTES) -> bytes:
    """A file of a folder source: inside ``folder``, and at most ``limit`` bytes."""
    resolved = inside(folder, path)
    with open(resolved, "rb") as f:
        return bounded(f, resolved.stat().st_size, limit, str(path))


def tar_member(path: Path, archive: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    """One member's bytes, at most ``limit`` whatever its header says; a corrupt or truncated member is one line."""
    where = f"{path}: {member.name}"
    try:
        return bounded(archive.extractfile(member), member.size, limit, where)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{where}: not readable, or truncated ({type(e).__name__}: {e})") from None
