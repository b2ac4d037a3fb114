"""Preparing in bounded batches and reading splits where they are used, on generated colour images
(mini-ImageNet's folder form, tieredImageNet's pickles of PNGs): the same bytes on 1 and 2 CPUs as in one process
and as a plain decode, a data set several times the memory bound prepared within it in every process, a driver whose
memory does not grow with the data set, and training that ends with the same bits whichever way its workers read the
splits."""

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import data
from benchmarks.stream_data import mini_imagenet_images
from cluster.worker import deliver
from data import tiered_imagenet
from data.pickled import read_span
from pipelines.build import prepared
from pipelines.config import load
from pipelines.session import Session
from tests.benchmark_data import encoded, image, lists
from tests.conftest import start_local_ray

MEMORY_MB = 32  # data.prepare_memory_mb's floor
MiB = 1 << 20


def config(source: Path, cache: Path, *overrides: str):
    base = ["data.name=mini_imagenet", f"data.source={source}", f"data.cache_dir={cache}", "model.name=conv4", "model.width=4"]
    task = ["task.ways=2", "task.shots=1", "task.queries=1", "train.meta_batch=3", "train.steps=2", "train.compile=false", "cluster.workers=1"]
    return load(None, [*base, *task, *overrides])


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """300 PNGs of 12x12: 3 per class."""
    return mini_imagenet_images(tmp_path_factory.mktemp("small"), 300, side=12)


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Path:
    """1,000 small PNGs, stored at 224x224: 150 MB decoded, several times ``MEMORY_MB``."""
    return mini_imagenet_images(tmp_path_factory.mktemp("large"), 1000, side=12)


@pytest.fixture(scope="module")
def large_prepared(ray_session, small, large, tmp_path_factory) -> tuple[dict, int, Path]:
    """``large`` prepared on 2 CPUs within ``MEMORY_MB``, after ``small`` (its processes' own memory: 300 images at
    224x224 fit in a few batches); the first's figures, the driver's memory before the second, and its folder."""
    start_local_ray(ray_session)
    cache, overrides = tmp_path_factory.mktemp("cache"), ["data.image_size=224", "data.prepare_cpus=2", f"data.prepare_memory_mb={MEMORY_MB}"]
    baseline = data.preparation_of(prepared(config(small, cache, *overrides)))
    driver_before = psutil.Process().memory_info().rss
    return baseline, driver_before, prepared(config(large, cache, *overrides))


def tiered_pickles(folder: Path, per_class: int = 2) -> Path:
    """tieredImageNet's files (``<split>_images_png.pkl``: PNGs as uint8 arrays; ``<split>_labels.pkl``) holding
    ``per_class`` 12x12 images per class and one more for each split's first class (cut off: the splits keep
    ``per_class``), in a shuffled order, so that a split's rows are not the pickle's order."""
    folder.mkdir()
    for split, labels in lists("tiered_imagenet").items():
        rows = [(c, i) for c in range(len(labels)) for i in range(per_class + (c == 0))]
        rows = [rows[i] for i in np.random.default_rng(len(labels)).permutation(len(rows))]
        pngs = [np.frombuffer(encoded(image(labels[c], i), "PNG"), np.uint8) for c, i in rows]
        meta = {"label_specific": np.array([c for c, _ in rows]), "label_specific_str": labels}
        (folder / f"{split}_images_png.pkl").write_bytes(pickle.dumps(pngs))
        (folder / f"{split}_labels.pkl").write_bytes(pickle.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def tiered(tmp_path_factory) -> Path:
    return tiered_pickles(tmp_path_factory.mktemp("tiered") / "copy")


def tiered_config(source: Path, cache: Path, *overrides: str):
    base = [f"data.source={source}", f"data.cache_dir={cache}", "data.name=tiered_imagenet", "model.name=conv4", "model.width=4"]
    return load(None, [*base, "task.ways=2", "task.shots=1", "task.queries=1", *overrides])


def tiered_by_hand(source: Path, split: str, size: int) -> np.ndarray:
    """The split as a plain loop decodes the pickles: each class in name order, its PNGs in the pickle's order, cut
    to the smallest class, resized with Lanczos, channels first."""
    pngs = pickle.loads((source / f"{split}_images_png.pkl").read_bytes())
    meta = pickle.loads((source / f"{split}_labels.pkl").read_bytes())
    classes: dict[str, list] = {}
    for png, label in zip(pngs, meta["label_specific"], strict=True):
        pixels = Image.open(io.BytesIO(png.tobytes())).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
        classes.setdefault(meta["label_specific_str"][label], []).append(np.asarray(pixels).transpose(2, 0, 1))
    n = min(len(images) for images in classes.values())
    return np.stack([np.stack(classes[name][:n]) for name in sorted(classes)])


def files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet")) + sorted(folder.glob("*.npy"))}


def decoded_by_hand(source: Path, split: str, size: int) -> np.ndarray:
    """The split as a plain loop decodes it: each class's images in the CSV's order, resized with Lanczos, channels first."""
    rows = [line.split(",") for line in (source / f"{split}.csv").read_text().splitlines()[1:]]
    classes: dict[str, list] = {}
    for name, label in rows:
        image = Image.open(io.BytesIO((source / "images" / name).read_bytes())).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
        classes.setdefault(label, []).append(np.asarray(image).transpose(2, 0, 1))
    n = min(len(images) for images in classes.values())
    return np.stack([np.stack(images[:n]) for images in classes.values()])


def test_one_and_two_cpus_write_the_same_bytes_as_one_process(ray_local, small, tmp_path):
    folders = {cpus: prepared(config(small, tmp_path / f"cache{cpus}", "data.image_size=12", f"data.prepare_cpus={cpus}")) for cpus in (0, 1, 2)}
    assert [data.preparation_of(f)["cpus"] for f in folders.values()] == [0, 1, 2]
    assert files(folders[1]) == files(folders[0]) == files(folders[2])
    assert data.manifest_of(folders[1]) == data.manifest_of(folders[0]) == data.manifest_of(folders[2])
    arrays = data.load_splits(folders[2])
    for split in ("train", "val", "test"):
        assert np.array_equal(arrays[split], decoded_by_hand(small, split, 12))
        column = pq.read_table(folders[2] / f"{split}.parquet", columns=["sample"]).column("sample").combine_chunks()
        assert np.array_equal(column.flatten().to_numpy().reshape(arrays[split].shape), arrays[split])


def test_a_tiered_imagenet_pickle_prepares_on_one_and_two_cpus_to_the_same_bytes_as_a_plain_decode(ray_local, tiered, tmp_path):
    folders = {cpus: prepared(tiered_config(tiered, tmp_path / f"cache{cpus}", "data.image_size=12", f"data.prepare_cpus={cpus}")) for cpus in (1, 2)}
    assert [data.preparation_of(f)["cpus"] for f in folders.values()] == [1, 2]
    assert files(folders[1]) == files(folders[2]) and data.manifest_of(folders[1]) == data.manifest_of(folders[2])
    arrays = data.load_splits(folders[2])
    for split in ("train", "val", "test"):
        assert np.array_equal(arrays[split], tiered_by_hand(tiered, split, 12))
        column = pq.read_table(folders[2] / f"{split}.parquet", columns=["sample"]).column("sample").combine_chunks()
        assert np.array_equal(column.flatten().to_numpy().reshape(arrays[split].shape), arrays[split])


def test_tiered_imagenets_rows_hold_where_each_png_lies_in_its_pickle_not_the_png(tiered, tmp_path):
    """What keeps the driver flat however large the pickles (the memory test's are too small to show it)."""
    classes = tiered_imagenet.read(tiered, tiered_config(tiered, tmp_path).data)
    rows = [image for images in classes.values() for image in images]
    assert rows and all(image.raw is None and image.span is not None for image in rows)
    path = tiered / "val_images_png.pkl"
    pngs = pickle.loads(path.read_bytes())
    with open(path, "rb") as stream:
        for image in (image for image in rows if image.source == str(path)):
            assert read_span(stream, image.span, image.where) == pngs[int(image.name.split()[-1])].tobytes()


def test_a_data_set_several_times_the_memory_bound_prepares_within_it_in_every_process(large_prepared):
    baseline, driver_before, folder = large_prepared
    stats = data.preparation_of(folder)
    decoded = stats["images"] * 3 * 224 * 224
    assert decoded > 4 * MEMORY_MB * MiB
    # the driver holds the batch it writes beside its long-lived allocations (this test process's own): under twice
    # the bound, however many times the bound the data set is
    assert stats["driver_peak_mib"] * MiB - driver_before < 2 * MEMORY_MB * MiB
    # a worker holds a batch's rows in and its samples out: under twice the bound beyond the small set's peak, where a
    # worker that held the data set would pass it by more than four times
    assert stats["worker_peak_mib"] - baseline["worker_peak_mib"] < 2 * MEMORY_MB


def test_a_tiered_imagenet_pickle_several_times_the_memory_bound_decoded_prepares_within_it_in_every_process(ray_local, tiered, tmp_path):
    """Two images per class, then four (11 times the bound decoded): the second may not pass the first's peaks by
    more than a batch in and out."""
    overrides = ["data.image_size=224", "data.prepare_cpus=2", f"data.prepare_memory_mb={MEMORY_MB}"]
    baseline = data.preparation_of(prepared(tiered_config(tiered, tmp_path / "cache", *overrides)))
    source, driver_before = tiered_pickles(tmp_path / "four", 4), psutil.Process().memory_info().rss
    stats = data.preparation_of(prepared(tiered_config(source, tmp_path / "cache", *overrides)))
    assert stats["images"] * 3 * 224 * 224 > 10 * MEMORY_MB * MiB
    # the driver holds where each PNG lies in the pickles, never the PNGs, and the batch it writes: under twice the bound
    assert stats["driver_peak_mib"] * MiB - driver_before < 2 * MEMORY_MB * MiB
    assert stats["worker_peak_mib"] - baseline["worker_peak_mib"] < 2 * MEMORY_MB  # as above: a batch in and out


def test_the_drivers_memory_does_not_grow_with_the_data_set(ray_local, small, large, large_prepared):
    cache = large_prepared[2].parent

    def grown(source: Path, delivery: str) -> tuple[int, int]:
        """The driver's growth over a session's start and one step, and the splits' size."""
        cfg = config(source, cache, "data.image_size=224")
        arrays = data.split_arrays(prepared(cfg))
        before = psutil.Process().memory_info().rss
        with Session.from_config(cfg, deliver(arrays, delivery)) as session:
            session.steps(0, 1)
            return psutil.Process().memory_info().rss - before, sum(p.stat().st_size for p in arrays.values())

    _, small_size = grown(small, "shared_path")  # the first session pays for what any session loads once
    for delivery in ("shared_path", "object_store"):
        growth, size = grown(large, delivery)
        assert size > 3 * small_size
        assert growth < size / 10, delivery


def train(cfg, splits) -> torch.Tensor:
    with Session.from_config(cfg, splits) as session:
        session.steps(0, cfg.train.steps)
        return session.flat.detach().clone()


def test_training_on_splits_read_by_the_workers_ends_with_the_same_bits_as_on_arrays_held_by_the_driver(ray_local, small, tmp_path):
    cfg = config(small, tmp_path, "data.image_size=16")
    folder = prepared(cfg)
    in_memory = {split: np.array(array) for split, array in data.load_splits(folder).items()}  # what the driver held before
    reference = train(cfg, in_memory)
    for delivery in ("shared_path", "object_store"):
        assert torch.equal(train(cfg, deliver(data.split_arrays(folder), delivery)), reference), delivery


def test_a_memory_bound_below_the_floor_is_one_line_naming_the_key(small, tmp_path):
    with pytest.raises(ValueError, match=r"^config key 'data.prepare_memory_mb': expected an integer of at least 32 \(MiB\), got 8$"):
        config(small, tmp_path, "data.prepare_memory_mb=8")


def test_an_unreadable_image_decoded_on_ray_data_is_one_line_naming_it_and_leaves_nothing_behind(ray_local, tmp_path):
    source = mini_imagenet_images(tmp_path / "source", 100, side=8)
    victim = sorted((source / "images").iterdir())[7]
    victim.write_bytes(b"not a png")
    with pytest.raises(data.DataError, match=rf"^{victim}: not a readable image \(UnidentifiedImageError: [^\n]*$"):
        prepared(config(source, tmp_path / "cache", "data.image_size=8", "data.prepare_cpus=1"))
    assert not list((tmp_path / "cache").iterdir())


def test_an_unreadable_image_of_a_pickle_decoded_on_the_cluster_is_one_line_naming_it_and_leaves_nothing_behind(ray_local, tmp_path):
    source = tiered_pickles(tmp_path / "copy")
    path = source / "val_images_png.pkl"
    pngs = pickle.loads(path.read_bytes())
    pngs[5] = np.frombuffer(b"not a png", np.uint8)
    path.write_bytes(pickle.dumps(pngs))
    with pytest.raises(data.DataError, match=rf"^{path} image 5: not a readable image \(UnidentifiedImageError: [^\n]*$"):
        prepared(tiered_config(source, tmp_path / "cache", "data.image_size=8", "data.prepare_cpus=1"))
    assert not list((tmp_path / "cache").iterdir())
