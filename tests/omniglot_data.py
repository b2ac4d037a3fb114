"""Omniglot-shaped test data: two generated zips in the official layout, or the real small background sets.

The generated sets mirror the real pair's structure at a tenth of its size: two zips of five alphabets
each that share two alphabets byte for byte (as the real ones share Greek and Latin), 105x105
black-on-white PNGs at ``<set>/<alphabet>/characterNN/<id>_NN.png``, 20 drawings per character. Each
character is a few random pen strokes; each drawing redraws them with its own jitter, offset and pen
width, so a conv net has to learn what makes two drawings the same character, as on Omniglot.
Everything is drawn from fixed seeds and zipped with fixed timestamps: the bytes, and so the
checksums, are the same on every machine.
"""

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIDE = 105
DRAWINGS = 20
ALPHABETS = [f"Alphabet_{name}" for name in ("Ash", "Birch", "Cedar", "Elm", "Fir", "Hazel", "Oak", "Yew")]
SETS = {"synthetic_small1": ALPHABETS[:5], "synthetic_small2": ALPHABETS[3:]}  # Elm and Fir in both
CHARACTERS = 6  # per alphabet
ENV = "OMNIGLOT_DIR"  # a folder holding the official images_background_small{1,2}.zip


@dataclass(frozen=True)
class OmniglotZips:
    """Two Omniglot zips that overlap in some alphabets, and what a prepared dataset of both must hold."""

    zips: tuple[Path, Path]
    alphabets: int  # distinct, over both zips
    characters: int  # distinct, over both zips
    drawings: int  # per character
    official: bool  # the real background-small sets, verified against their published checksums

    @property
    def folder(self) -> Path:
        return self.zips[0].parent

    def overrides(self, source: Path | None = None) -> list[str]:
        """``small_set_overrides`` of ``source``, by default both zips."""
        return small_set_overrides(source or self.folder)


def small_set_overrides(source: Path) -> list[str]:
    """``--set`` items that point a shipped Omniglot config at ``source``, with a quarter of its alphabets held out
    for test (two of the small sets' eight), instead of the full sets' 423 characters."""
    return [f"data.source={source}", "data.split=group", "data.test_size=0.25"]


def strokes(rng: np.random.Generator) -> list[np.ndarray]:
    """A character: 2 to 4 strokes, each a polyline of 2 or 3 points in the middle of the canvas."""
    return [rng.uniform(20, SIDE - 20, size=(rng.integers(2, 4), 2)) for _ in range(rng.integers(2, 5))]


def drawing(character: list[np.ndarray], rng: np.random.Generator) -> bytes:
    """One person's drawing of ``character``: each point moved a little, the whole shifted, its own pen width."""
    image = Image.new("L", (SIDE, SIDE), 255)
    pen = ImageDraw.Draw(image)
    shift, width = rng.uniform(-6, 6, size=2), int(rng.integers(3, 6))
    for stroke in character:
        points = stroke + shift + rng.normal(0, 2.0, size=stroke.shape)
        pen.line([tuple(p) for p in points], fill=0, width=width, joint="curve")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def alphabet_files(alphabet: str) -> dict[str, bytes]:
    """``<alphabet>/characterNN/<id>_NN.png`` -> PNG bytes, the same whichever zip the alphabet is in."""
    rng = np.random.default_rng(ALPHABETS.index(alphabet))
    files = {}
    for c in range(1, CHARACTERS + 1):
        character = strokes(rng)
        for d in range(1, DRAWINGS + 1):
            files[f"{alphabet}/character{c:02d}/{ALPHABETS.index(alphabet) * 100 + c:04d}_{d:02d}.png"] = drawing(character, rng)
    return files


def write_zip(path: Path, top: str, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, raw in files.items():
            archive.writestr(zipfile.ZipInfo(f"{top}/{name}", date_time=(1980, 1, 1, 0, 0, 0)), raw)


def generated(folder: Path) -> OmniglotZips:
    folder.mkdir(parents=True, exist_ok=True)
    files = {alphabet: alphabet_files(alphabet) for alphabet in ALPHABETS}
    zips = []
    for name, alphabets in SETS.items():
        write_zip(folder / f"{name}.zip", name, {k: v for a in alphabets for k, v in files[a].items()})
        zips.append(folder / f"{name}.zip")
    return OmniglotZips(tuple(zips), len(ALPHABETS), len(ALPHABETS) * CHARACTERS, DRAWINGS, official=False)


def omniglot_zips(scratch: Path) -> OmniglotZips:
    """The real small background sets where ``OMNIGLOT_DIR`` names their folder, else generated ones in ``scratch``."""
    if os.environ.get(ENV):
        folder = Path(os.environ[ENV])
        zips = tuple(folder / f"images_background_small{n}.zip" for n in (1, 2))
        missing = [z for z in zips if not z.is_file()]
        if missing:
            raise FileNotFoundError(f"{ENV}={folder}: {missing[0].name} is not there")
        return OmniglotZips(zips, alphabets=8, characters=242, drawings=20, official=True)  # see data/README.md
    return generated(scratch)
