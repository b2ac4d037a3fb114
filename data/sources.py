"""Where raw data comes from: local files and folders, or checksum-verified, resumable downloads."""

import hashlib
import sys
import urllib.error
import urllib.request
from pathlib import Path


class DataError(ValueError):
    """Bad input data, reported like a bad config value: one line naming the file or key and what is expected."""


OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/{name}.zip"
# The official Omniglot zips by name, with the checksum each is verified against wherever it comes from: the
# data set's README gives none, so the small sets carry the sha256 we recorded and the full sets the md5 that
# torchvision's Omniglot loader has verified them with for years.
OMNIGLOT_CHECKSUMS = {
    "images_background_small1": "sha256:f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
    "images_background_small2": "sha256:3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
    "images_background": "md5:68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "md5:6b91aef0f799c5bb55b94e3f2daec811",
}
# Other official archives by name: their URL, and the checksum torchvision's loader verifies them with.
OFFICIAL_ARCHIVES = {
    "cifar-100-python": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "md5:eb9058c3a382ffc7106e4002c42a8d85"),
}
ARCHIVE_SUFFIXES = (".zip", ".tar.gz")
# Seconds without a byte from the server before a download gives up: an offline machine fails fast, and a
# stalled transfer resumes from its .part file on the next try.
NETWORK_TIMEOUT_S = 8
CHUNK = 1 << 20


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def checksum(path: Path) -> str:
    """sha256 of a file; for a folder, of every file's relative path and contents, in sorted order."""
    if path.is_file():
        return file_digest(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:  # in blocks: a folder may hold a file too large to read whole (its reader refuses it)
            while block := f.read(CHUNK):
                digest.update(block)
    return digest.hexdigest()


def check(path: Path, expected: str, where: str) -> None:
    """Refuse ``path`` unless its digest is ``expected`` (``"<algorithm>:<hex>"``)."""
    algorithm, _, hexdigest = expected.partition(":")
    actual = file_digest(path, algorithm)
    if actual != hexdigest:
        raise DataError(f"{where}: {algorithm} {actual} does not match the expected {hexdigest}")


def official(name: str) -> tuple[str, str] | None:
    """The URL and checksum of an official file, by its name without the archive suffix; None for any other name."""
    if name in OMNIGLOT_CHECKSUMS:
        return OMNIGLOT_URL.format(name=name), OMNIGLOT_CHECKSUMS[name]
    return OFFICIAL_ARCHIVES.get(name)


def official_checksum(filename: str) -> str | None:
    """The checksum an archive with an official file name must have, wherever it comes from."""
    suffix = next((s for s in ARCHIVE_SUFFIXES if filename.endswith(s)), None)
    found = official(filename.removesuffix(suffix)) if suffix else None
    return found[1] if found else None


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def resolve(source: str, downloads: Path) -> list[tuple[Path, str]]:
    """Local paths for ``source``, each with its sha256.

    ``source`` is a path, a URL (optionally ending in ``#sha256=<hex>``), or the
    name of an official file (an Omniglot zip, ``images_background``...; CIFAR-100's
    ``cifar-100-python``), which is downloaded from its home. A folder holding zips
    stands for those zips. Official archives are verified against their known
    checksums wherever they come from.
    """
    url, _, fragment = source.partition("#sha256=")
    expected = f"sha256:{fragment}" if fragment else None
    path = Path(url)
    if is_url(url) or path.exists():
        zips = sorted(path.glob("*.zip")) if path.is_dir() else []
        return [verified(str(z), None, downloads) for z in zips] or [verified(url, expected, downloads)]
    found = official(url)
    if found is None:
        names = sorted([*OMNIGLOT_CHECKSUMS, *OFFICIAL_ARCHIVES])
        raise DataError(f"data.source: {source} does not exist (expected a path, a URL or one of {names})")
    return [verified(found[0], expected, downloads)]


def verified(url: str, expected: str | None, downloads: Path) -> tuple[Path, str]:
    """A local path for ``url`` (downloaded if it is a URL) and its sha256; an archive with an official name, or any
    ``expected`` checksum, must match."""
    name = Path(url).name
    expected = expected or official_checksum(name)
    if not is_url(url):
        path = Path(url)
        if expected:
            check(path, expected, str(path))
        return path, checksum(path)
    target = downloads / name
    recorded = target.with_name(target.name + ".sha256")
    expected = expected or (f"sha256:{recorded.read_text().strip()}" if recorded.exists() else None)
    path = download(url, target, expected)
    if expected:
        check(path, expected, str(path))
    return path, checksum(path)


def download(url: str, target: Path, expected: str | None) -> Path:
    """Fetch ``url`` to ``target``, resuming a partial ``.part`` file; verified before it takes its final name."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=NETWORK_TIMEOUT_S) as response, open(part, "ab" if response.status == 206 else "wb") as f:
            while block := response.read(CHUNK):
                f.write(block)
    except urllib.error.HTTPError as e:
        raise DataError(f"data.source: downloading {url} failed with HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(
            f"data.source: cannot download {url} ({reason}); without network access, fetch it elsewhere "
            f"and pass its local path: --set data.source=PATH"
        ) from None
    if expected:
        try:
            check(part, expected, url)
        except DataError:
            part.unlink()
            raise
    else:
        recorded = target.with_name(target.name + ".sha256")
        recorded.write_text(file_digest(part) + "\n")
        print(f"note: no published checksum for {url}; recorded sha256 in {recorded}", file=sys.stderr)
    part.rename(target)
    return target
