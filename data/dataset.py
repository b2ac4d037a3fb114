"""Raw sources -> one cached Parquet dataset with train/test (and validation) splits -> contiguous arrays.

A prepared dataset is a folder ``data/cache/<name>-<digest>/`` holding ``train.parquet``,
``test.parquet`` and ``manifest.json``. The digest covers the data config, the seed and
the sources' checksums, so preparing again is free and any change builds a new folder.
Each Parquet row is one sample: its class index, label, group and a fixed-size array:
an image's uint8 pixels (a quarter of float32's bytes; scaled and normalised per task,
``meta_core.tasks.as_inputs``) or float32 features. Rows are sorted by class so a split
loads as a single (classes, samples, ...) array with no per-row Python.
"""

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.registry import DATASETS, Classes, DataConfig
from data.sources import DataError, file_digest, resolve
from meta_core.tasks import TaskShape

FORMAT_VERSION = 3  # 2: an optional validation split; 3: images as uint8, published splits
CACHE = Path(__file__).parent / "cache"
SPLITS = ("train", "val", "test")  # "val" only where data.val_size holds some out
# Keys that change where or how a dataset is found, not what it holds.
NOT_CONTENT = ("cache_dir",)


def cache_dir(data: DataConfig) -> Path:
    return Path(data.cache_dir) if data.cache_dir else CACHE


def sources(data: DataConfig) -> list[str]:
    return [data.source] if isinstance(data.source, str) else list(data.source)


def combine(parts: list[Classes]) -> Classes:
    """All classes, each kept once where sources overlap (the first source wins)."""
    merged: Classes = {}
    for classes in parts:
        for key, samples in classes.items():
            merged.setdefault(key, samples)
    return dict(sorted(merged.items()))


def held_out_count(size, units: int, key: str, unit: str) -> int:
    """How many of ``units`` ``size`` holds out: a count, or a fraction of them (rounded, and kept between one and
    all but one); at least one unit must stay for training."""
    count = size if isinstance(size, int) and size >= 1 else min(units - 1, max(1, round(units * size)))
    if not 1 <= count < units:
        raise DataError(f"{key}: {count} {unit} held out, but only {units} are there to split (at least one must stay for training)")
    return count


def assign_splits(keys: list[tuple[str, str]], data: DataConfig, seed: int) -> dict[tuple[str, str], str]:
    """Each class's split: its published one (the key's group) for a data set with ``fixed_splits``; otherwise whole
    groups (or classes) drawn from ``seed``, the test ones first, then the validation ones from the rest, so the test
    split is the same whatever ``data.val_size`` is."""
    if DATASETS[data.name].fixed_splits:
        return {key: key[0] for key in keys}
    by_group = data.split == "group"
    if by_group and any(group == "" for group, _ in keys):
        raise DataError("data.split: 'group' needs every class to have a group; set data.group_column or use data.split=class")
    unit = "groups" if by_group else "classes"
    units = sorted({group for group, _ in keys} if by_group else set(keys))
    if len(units) < 2:
        raise DataError(f"data.split: need at least 2 {unit} to split, found {len(units)}")
    tests = held_out_count(data.test_size, len(units), "data.test_size", unit)
    vals = held_out_count(data.val_size, len(units) - tests, "data.val_size", unit) if data.val_size else 0
    order = [units[i] for i in np.random.default_rng(seed).permutation(len(units))]
    split_of = {**{u: "test" for u in order[:tests]}, **{u: "val" for u in order[tests : tests + vals]}}
    return {key: split_of.get(key[0] if by_group else key, "train") for key in keys}


def rectangular(classes: Classes) -> tuple[np.ndarray, int, str]:
    """Classes as one (classes, samples, ...) array, each cut to the smallest class; and that class."""
    smallest = min(classes, key=lambda k: len(classes[k]))
    n = len(classes[smallest])
    return np.stack([np.stack(samples[:n]) for samples in classes.values()]), n, "/".join(smallest)


def rotated(x: np.ndarray, labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """MAML's Omniglot protocol: each class also at 90, 180 and 270 degrees, as new classes."""
    turns = [np.rot90(x, k, axes=(-2, -1)) for k in range(4)]
    return np.concatenate(turns), [f"{label}@{90 * k}" if k else label for k in range(4) for label in labels]


def write_split(path: Path, x: np.ndarray, labels: list[str], groups: list[str]) -> None:
    """One split's rows; ``x`` is uint8 (images) or float32 (features), and is stored as it is."""
    classes, samples = x.shape[:2]
    flat = pa.array(np.ascontiguousarray(x).reshape(-1))
    columns = {
        "class": pa.array(np.repeat(np.arange(classes, dtype=np.int32), samples)),
        "label": pa.array(np.repeat(labels, samples)),
        "group": pa.array(np.repeat(groups, samples)),
        "sample": pa.FixedSizeListArray.from_arrays(flat, int(np.prod(x.shape[2:]))),
    }
    # Dictionary-encoding mostly-zero pixels makes reads several times slower; lz4 alone keeps them fast.
    pq.write_table(pa.table(columns), path, compression="lz4", use_dictionary=["label", "group"])


def build(folder: Path, data: DataConfig, seed: int, checked: list[dict]) -> dict:
    """Write the Parquet splits and return the manifest (not yet written)."""
    classes = combine([DATASETS[data.name].read(Path(s["path"]), data) for s in checked])
    split_of = assign_splits(list(classes), data, seed)
    manifest = {
        "format_version": FORMAT_VERSION,
        "sources": [{"source": s["source"], "file": Path(s["path"]).name, "sha256": s["sha256"]} for s in checked],
        "kind": "features" if data.features else "images",
        "preprocessing": (
            {"features": list(data.features)}
            if data.features
            else {"image_size": data.image_size, "resample": "lanczos", "dtype": "uint8", "omniglot_strokes": 255, "rotations": data.rotations}
        ),
        "splits": (
            {"by": "published"}
            if DATASETS[data.name].fixed_splits
            else {"by": data.split, "test_size": data.test_size, "val_size": data.val_size, "seed": seed}
        ),
    }
    for split in SPLITS:
        part = {k: v for k, v in classes.items() if split_of[k] == split}
        if not part:  # no validation split unless data.val_size asks for one (or the set publishes one)
            continue
        x, samples, smallest = rectangular(part)
        labels = ["/".join(k) for k in part]
        groups = [k[0] for k in part]
        if split == "train" and data.rotations:
            x, labels = rotated(x, labels)
            groups = groups * 4
        path = folder / f"{split}.parquet"
        write_split(path, x, labels, groups)
        manifest["splits"][split] = {
            "groups": sorted(set(groups)),
            "classes": len(labels),
            "samples_per_class": samples,
            "smallest_class": smallest,
            "shape": list(x.shape),
            "file": path.name,
            "sha256": file_digest(path),
        }
    return manifest


def prepare(data: DataConfig, seed: int, task: TaskShape) -> Path:
    """The prepared dataset's folder for ``data`` and ``seed``, built once and cached.

    The folder is written under a temporary name and renamed into place, so it is
    either complete or absent. The ``task`` shape is checked against it every time.
    """
    root = cache_dir(data)
    checked = []
    for source in sources(data):
        for path, sha256 in resolve(source, root / "downloads"):
            checked.append({"source": source, "path": str(path.resolve()), "sha256": sha256})
    content = {k: v for k, v in asdict(data).items() if k not in NOT_CONTENT}
    key = json.dumps({"format": FORMAT_VERSION, "data": content, "seed": seed, "sha256": [s["sha256"] for s in checked]}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = root / f"{data.name}-{digest}"
    if not (folder / "manifest.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=root))
        try:
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
            manifest = {"digest": digest, **build(tmp, data, seed, checked)}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "manifest.json").exists():  # not another process finishing the same build first
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    check_task(folder, task)
    return folder


def manifest_of(folder: Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())


def split_names(manifest: dict) -> list[str]:
    """The splits a prepared dataset holds, in ``SPLITS`` order: train and test, and val where it has one."""
    return [split for split in SPLITS if split in manifest["splits"]]


def check_task(folder: Path, task: TaskShape) -> None:
    """Every split must have enough classes for ``task.ways`` and samples for ``task.shots + task.queries``."""
    manifest = manifest_of(folder)
    for split in split_names(manifest):
        info = manifest["splits"][split]
        if task.ways > info["classes"]:
            raise DataError(f"task.ways: {task.ways} ways but the {split} split of {folder} has only {info['classes']} classes")
        need = task.shots + task.queries
        if need > info["samples_per_class"]:
            raise DataError(
                f"task.shots + task.queries: {need} samples per class needed but class '{info['smallest_class']}' "
                f"in the {split} split has only {info['samples_per_class']}"
            )


def load_splits(folder: str | Path) -> dict[str, np.ndarray]:
    """``{"train": ..., "test": ...}`` (and ``"val"``), each one contiguous array as stored (uint8 images, float32
    features), read with pyarrow (no per-row Python)."""
    folder = Path(folder)
    manifest = manifest_of(folder)
    splits, out = manifest["splits"], {}
    for split in split_names(manifest):
        column = pq.read_table(folder / splits[split]["file"], columns=["sample"]).column("sample").combine_chunks()
        out[split] = column.flatten().to_numpy().reshape(splits[split]["shape"])
    return out
