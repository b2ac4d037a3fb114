"""Where raw data comes from: local files and folders, or checksum-verified, resumable downloads."""

import hashlib
import sys
import urllib.error
import urllib.request
from pathlib import Path


class DataError(ValueError):
    """Bad input data, reported like a bad config value: one line naming the file or key and what is expected."""


OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/{name}.zip"
# Published checksums of the official Omniglot zips; the full sets have none on record, so the
# first download records its own checksum and later downloads are verified against it.
OMNIGLOT_SHA256 = {
    "images_background_small1": "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
    "images_background_small2": "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
    "images_background": None,
    "images_evaluation": None,
}
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def checksum(path: Path) -> str:
    """sha256 of a file; for a folder, of every file's relative path and contents, in sorted order."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def resolve(source: str, downloads: Path) -> list[tuple[Path, str]]:
    """Local paths for ``source``, each with its checksum.

    ``source`` is a path, a URL (optionally ending in ``#sha256=<hex>``), or the
    name of an official Omniglot zip (``images_background_small1``...), which is
    downloaded from the data set's repository. A folder holding zips stands for
    those zips. Official zips are verified against their published checksums
    wherever they come from.
    """
    url, _, fragment = source.partition("#sha256=")
    path = Path(url)
    if is_url(url) or path.exists():
        zips = sorted(path.glob("*.zip")) if path.is_dir() else []
        return [verified(str(z), "", downloads) for z in zips] or [verified(url, fragment, downloads)]
    if url not in OMNIGLOT_SHA256:
        raise DataError(f"data.source: {source} does not exist (expected a path, a URL or one of {sorted(OMNIGLOT_SHA256)})")
    return [verified(OMNIGLOT_URL.format(name=url), fragment, downloads)]


def verified(url: str, expected: str, downloads: Path) -> tuple[Path, str]:
    """A local path for ``url`` (downloaded if it is a URL) and its checksum, which must match any known one."""
    expected = expected or OMNIGLOT_SHA256.get(Path(url).name.removesuffix(".zip"))
    if is_url(url):
        target = downloads / Path(url).name
        recorded = target.with_name(target.name + ".sha256")
        expected = expected or (recorded.read_text().strip() if recorded.exists() else None)
        path = download(url, target, expected)
    else:
        path = Path(url)
    actual = checksum(path)
    if expected and actual != expected:
        raise DataError(f"{path}: sha256 {actual} does not match the expected {expected}")
    return path, actual


def download(url: str, target: Path, sha256: str | None) -> Path:
    """Fetch ``url`` to ``target``, resuming a partial ``.part`` file; verified before it takes its final name."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, open(part, "ab" if response.status == 206 else "wb") as f:
            while block := response.read(CHUNK):
                f.write(block)
    except urllib.error.HTTPError as e:
        raise DataError(f"data.source: downloading {url} failed with HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(
            f"data.source: cannot download {url} ({reason}); with no network, fetch it elsewhere and give its local path"
        ) from None
    actual = sha256_file(part)
    if sha256 and actual != sha256:
        part.unlink()
        raise DataError(f"{url}: downloaded sha256 {actual} does not match the expected {sha256}")
    if sha256 is None:
        recorded = target.with_name(target.name + ".sha256")
        recorded.write_text(actual + "\n")
        print(f"note: no published checksum for {url}; recorded sha256 {actual} in {recorded}", file=sys.stderr)
    part.rename(target)
    return target
