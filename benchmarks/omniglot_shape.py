"""Two generated zips in the shape of Omniglot's official full sets, for running the lifelong configs' whole protocol
(meta-test to 600 classes) where the real sets cannot be downloaded: ``background_shape.zip`` (964 characters in 30
alphabets) and ``evaluation_shape.zip`` (659 in 20), 20 drawings each, drawn as ``tests/omniglot_data.py`` draws its
characters (random pen strokes, each drawing with its own jitter), from fixed seeds.

    .venv/bin/python -m benchmarks.omniglot_shape DIR
"""

import sys
from pathlib import Path

import numpy as np

from tests.omniglot_data import DRAWINGS, drawing, strokes, write_zip

SETS = {"background_shape": (30, 964, 1), "evaluation_shape": (20, 659, 2)}  # alphabets, characters, seed


def write_set(path: Path, top: str, alphabets: int, characters: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    per_alphabet = np.full(alphabets, characters // alphabets) + (np.arange(alphabets) < characters % alphabets)
    files = {}
    for a, count in enumerate(per_alphabet):
        for c in range(1, count + 1):
            character = strokes(rng)
            for d in range(1, DRAWINGS + 1):
                files[f"Alphabet_{top}_{a:02d}/character{c:02d}/{a:02d}{c:02d}_{d:02d}.png"] = drawing(character, rng)
    write_zip(path, top, files)


def main() -> None:
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    for top, (alphabets, characters, seed) in SETS.items():
        write_set(folder / f"{top}.zip", top, alphabets, characters, seed)
        print(folder / f"{top}.zip")


if __name__ == "__main__":
    main()
