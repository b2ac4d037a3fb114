"""Omniglot straight from its official zips: one (classes, 20, 28, 28) array and each class's alphabet."""

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 28


def to_array(png: bytes) -> np.ndarray:
    """A 105x105 black-on-white drawing as a 28x28 float image with strokes at 1.0 (antialiased)."""
    image = Image.open(io.BytesIO(png)).convert("L").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return 1.0 - np.asarray(image, dtype=np.float32) / 255.0


def read_zips(paths: list[Path]) -> tuple[np.ndarray, list[str]]:
    """Characters from every zip, each kept once where zips overlap (the small sets share Greek and Latin)."""
    drawings: dict[tuple[str, str], dict[str, bytes]] = {}
    for path in paths:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                parts = name.split("/")
                if name.endswith(".png") and len(parts) >= 4:
                    alphabet, character, file = parts[-3:]
                    drawings.setdefault((alphabet, character), {})[file] = archive.read(name)
    keys = sorted(drawings)
    images = np.stack([np.stack([to_array(drawings[k][f]) for f in sorted(drawings[k])]) for k in keys])
    return images, [alphabet for alphabet, _ in keys]


def load_splits(source: str | list[str], seed: int, test_alphabets: int = 2) -> dict[str, np.ndarray]:
    """Train and test splits with whole alphabets held out for test, chosen from ``seed``."""
    sources = [source] if isinstance(source, str) else source
    paths = []
    for s in map(Path, sources):
        paths += sorted(s.glob("*.zip")) if s.is_dir() else [s]
    images, alphabets = read_zips(paths)
    names = sorted(set(alphabets))
    held_out = set(np.random.default_rng(seed).choice(names, size=test_alphabets, replace=False))
    test = np.array([a in held_out for a in alphabets])
    return {"train": images[~test], "test": images[test]}
