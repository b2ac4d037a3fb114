"""Raw sources -> one cached Parquet dataset with train/test (and validation) splits -> memory-mapped arrays.

A prepared dataset is a folder ``data/cache/<name>-<digest>/`` holding ``train.parquet``,
``test.parquet``, the same samples as ``train.npy`` and ``test.npy``, and ``manifest.json``.
The digest covers the data config, the seed and the sources' checksums, so preparing again
is free and any change builds a new folder. Each Parquet row is one sample: its class index,
label, group and a fixed-size array: an image's uint8 pixels (a quarter of float32's bytes;
scaled and normalised per task, ``meta_core.tasks.as_inputs``) or float32 features. Rows are
sorted by class so a split is a single (classes, samples, ...) array, which the ``.npy`` holds
raw for workers to memory-map (``load_splits``). Splits are written in bounded batches
(``data.stream``), so preparing needs memory for a few batches, not for the data set.
"""

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from data import stream
from data.registry import DATASETS, Classes, DataConfig
from data.sources import DataError, file_digest, resolve
from meta_core.tasks import TaskShape

FORMAT_VERSION = 4  # 2: an optional validation split; 3: images as uint8, published splits; 4: each split also as .npy
CACHE = Path(__file__).parent / "cache"
PREPARATION = "preparation.json"  # how the folder was built: CPUs, seconds, images/s, peak memory (not its content)
SPLITS = ("train", "val", "test")  # "val" only where data.val_size holds some out
# Keys that change where or how a dataset is found, built or read, not what it holds.
NOT_CONTENT = ("cache_dir", "prepare_cpus", "prepare_memory_mb", "delivery")


def cache_dir(data: DataConfig) -> Path:
    return Path(data.cache_dir) if data.cache_dir else CACHE


def sources(data: DataConfig) -> list[str]:
    return [data.source] if isinstance(data.source, str) else list(data.source)


def combine(parts: list[Classes]) -> tuple[Classes, dict[tuple[str, str], int]]:
    """All classes, each kept once where sources overlap (the first source wins), and the source each came from."""
    merged: Classes = {}
    source_of: dict[tuple[str, str], int] = {}
    for index, classes in enumerate(parts):
        for key, samples in classes.items():
            if key not in merged:
                merged[key], source_of[key] = samples, index
    return dict(sorted(merged.items())), source_of


def held_out_count(size, units: int, key: str, unit: str) -> int:
    """How many of ``units`` ``size`` holds out: a count, or a fraction of them (rounded, and kept between one and
    all but one); at least one unit must stay for training."""
    count = size if isinstance(size, int) and size >= 1 else min(units - 1, max(1, round(units * size)))
    if not 1 <= count < units:
        raise DataError(f"{key}: {count} {unit} held out, but only {units} are there to split (at least one must stay for training)")
    return count


def assign_splits(keys: list[tuple[str, str]], data: DataConfig, seed: int, source_of: dict[tuple[str, str], int]) -> dict[tuple[str, str], str]:
    """Each class's split: its published one (the key's group) for a data set with ``fixed_splits``; with
    ``data.split: source``, the test split is the classes of the last of ``data.source`` (Omniglot's evaluation set
    against its background set) and validation groups are drawn from the rest; otherwise whole groups (or classes)
    drawn from ``seed``, the test ones first, then the validation ones from the rest, so the test split is the same
    whatever ``data.val_size`` is."""
    if DATASETS[data.name].fixed_splits:
        return {key: key[0] for key in keys}
    if data.split == "source":
        last = len(sources(data)) - 1
        held_out = {key for key in keys if last > 0 and source_of[key] == last}
        if not held_out or len(held_out) == len(keys):
            raise DataError(
                "data.split: 'source' holds out the classes of the last of data.source's sources as the test split: "
                f"give at least 2 sources, the last with classes of its own (got {last + 1})"
            )
        rest = assign_splits([k for k in keys if k not in held_out], replace(data, split="group", test_size=0), seed, source_of)
        return {key: "test" if key in held_out else rest[key] for key in keys}
    by_group = data.split == "group"
    if by_group and any(group == "" for group, _ in keys):
        raise DataError("data.split: 'group' needs every class to have a group; set data.group_column or use data.split=class")
    unit = "groups" if by_group else "classes"
    units = sorted({group for group, _ in keys} if by_group else set(keys))
    if len(units) < 2:
        raise DataError(f"data.split: need at least 2 {unit} to split, found {len(units)}")
    tests = held_out_count(data.test_size, len(units), "data.test_size", unit) if data.test_size else 0
    vals = held_out_count(data.val_size, len(units) - tests, "data.val_size", unit) if data.val_size else 0
    order = [units[i] for i in np.random.default_rng(seed).permutation(len(units))]
    split_of = {**{u: "test" for u in order[:tests]}, **{u: "val" for u in order[tests : tests + vals]}}
    return {key: split_of.get(key[0] if by_group else key, "train") for key in keys}


def plan(name: str, classes: Classes, rotations: bool) -> tuple[stream.Plan, str]:
    """A split's rows: each class cut to the smallest class's samples, then (MAML's Omniglot protocol, ``rotations``)
    every class again at 90, 180 and 270 degrees, as new classes; and the smallest class."""
    smallest = min(classes, key=lambda k: len(classes[k]))
    n = len(classes[smallest])
    turns = range(4) if rotations else range(1)
    labels = ["/".join(k) for k in classes]
    rows = [(sample, k) for k in turns for samples in classes.values() for sample in samples[:n]]
    sample_shape, dtype = stream.shape_of(rows[0][0])
    split = stream.Plan(
        name,
        rows,
        [f"{label}@{90 * k}" if k else label for k in turns for label in labels],
        [key[0] for _ in turns for key in classes],
        (len(turns) * len(classes), n, *sample_shape),
        dtype,
    )
    return split, "/".join(smallest)


def parallelism(data: DataConfig, plans: list[stream.Plan]) -> int:
    """CPUs to decode on: ``data.prepare_cpus``, or where it is null, the cluster's where there are at least
    ``stream.PARALLEL_ROWS`` images to decode, else none (0: in this process). Samples a reader gave as arrays (or
    as images of an array to resize, ``stream.Pixels``) are already in this process, so they stay here."""
    encoded = [isinstance(sample, stream.Encoded) for p in plans for sample, _ in p.rows]
    if not all(encoded):
        return 0
    if data.prepare_cpus is not None:
        return data.prepare_cpus
    return -1 if len(encoded) >= stream.PARALLEL_ROWS else 0


def build(folder: Path, data: DataConfig, seed: int, checked: list[dict], connect=None) -> tuple[dict, stream.Stats]:
    """Write the splits and return the manifest (not yet written) and what writing them took."""
    classes, source_of = combine([DATASETS[data.name].read(Path(s["path"]), data) for s in checked])
    try:
        split_of = assign_splits(list(classes), data, seed, source_of)
    except DataError:
        stream.check_readable([sample for samples in classes.values() for sample in samples])  # a bad file is the first thing to fix
        raise
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
    plans, smallest = [], {}
    for split in SPLITS:
        part = {k: v for k, v in classes.items() if split_of[k] == split}
        if part:  # no validation split unless data.val_size asks for one (or the set publishes one)
            split_plan, smallest[split] = plan(split, part, split == "train" and data.rotations)
            plans.append(split_plan)
    # Every file must be a readable image, the samples cut off too (few where classes are near-equal).
    stream.check_readable([x for p in plans for k, samples in classes.items() if split_of[k] == p.name for x in samples[p.shape[1] :]])
    cpus = parallelism(data, plans)
    stats = stream.write(folder, plans, cpus, data.prepare_memory_mb, connect)
    for split_plan in plans:
        split = split_plan.name
        manifest["splits"][split] = {
            "groups": sorted(set(split_plan.groups)),
            "classes": split_plan.shape[0],
            "samples_per_class": split_plan.shape[1],
            "smallest_class": smallest[split],
            "shape": list(split_plan.shape),
            "file": f"{split}.parquet",
            "sha256": file_digest(folder / f"{split}.parquet"),
            "array": f"{split}.npy",
            "array_sha256": file_digest(folder / f"{split}.npy"),
        }
    return manifest, stats


def prepare(data: DataConfig, seed: int, task: TaskShape, connect: Callable[[], None] | None = None) -> Path:
    """The prepared dataset's folder for ``data`` and ``seed``, built once and cached.

    The folder is written under a temporary name and renamed into place, so it is
    either complete or absent. The ``task`` shape is checked against it every time.
    ``connect`` joins the cluster, before images are decoded on it (``parallelism``).
    What the build took is recorded beside the manifest (``PREPARATION``).
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
            manifest, stats = build(tmp, data, seed, checked, connect)
            (tmp / "manifest.json").write_text(json.dumps({"digest": digest, **manifest}, indent=2) + "\n")
            (tmp / PREPARATION).write_text(json.dumps(stats.summary(), indent=2) + "\n")
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


def preparation_of(folder: Path) -> dict:
    """What building ``folder`` took (``stream.Stats.summary``)."""
    return json.loads((Path(folder) / PREPARATION).read_text())


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


def split_arrays(folder: str | Path) -> dict[str, Path]:
    """Each split's ``.npy`` file: the (classes, samples, ...) array as stored (uint8 images, float32 features)."""
    folder = Path(folder)
    manifest = manifest_of(folder)
    return {split: folder / manifest["splits"][split]["array"] for split in split_names(manifest)}


def load_splits(folder: str | Path) -> dict[str, np.ndarray]:
    """``{"train": ..., "test": ...}`` (and ``"val"``), each memory-mapped read-only: only the rows a caller
    gathers are read from disk, and every process of a machine shares their pages."""
    return {split: np.load(path, mmap_mode="r") for split, path in split_arrays(folder).items()}
