"""Preparing both small Omniglot zips (target < 30 s) and loading a prepared split (target < 1 s).

The zips are the benchmarks' Omniglot workload's (``OMNIGLOT_DIR``, else the
official sets by name, downloaded once into the data cache); the timed prepares
read them from where they lie, so no download is timed. Each row is the median
of ``--repeats`` runs; the ratio is against a baseline timed in the same run:
decoding the zips alone for prepare, ``np.load`` of the same arrays for load
(``load_splits`` memory-maps the prepared ``.npy`` files, so it reads no pixel).

    .venv/bin/python -m benchmarks.data_prepare
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np

import data
from benchmarks.common import median_seconds, workload
from data import omniglot, stream
from data.dataset import cache_dir, sources
from data.sources import resolve
from pipelines.build import prepared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config, _ = workload("omniglot")
    downloads = cache_dir(config.data) / "downloads"
    zips = [path for source in sources(config.data) for path, _ in resolve(source, downloads)]
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(args.repeats * 2))

        def prepare_cold() -> Path:  # an empty cache: a full build every time
            return prepared(config.with_values({"data.source": [str(z) for z in zips], "data.cache_dir": f"{tmp}/cache{next(counter)}"}))

        def decode_all() -> None:  # the reader lists the images; decoding them is the prepare's work
            for z in zips:
                stream.check_readable([image for images in omniglot.read(z, config.data).values() for image in images])

        decode = median_seconds(lambda _: decode_all(), args.repeats, 0)
        prepare = median_seconds(lambda _: prepare_cold(), args.repeats, 0)
        folder = prepare_cold()
        splits = data.load_splits(folder)
        np.save(f"{tmp}/train.npy", np.asarray(splits["train"]))
        npy = median_seconds(lambda _: np.load(f"{tmp}/train.npy"), args.repeats, 0)
        mapped = median_seconds(lambda _: data.load_splits(folder), args.repeats, 0)
    shape = "x".join(map(str, splits["train"].shape))
    rows = [
        ("decode both zips (baseline)", decode, decode, ""),
        ("prepare both zips, empty cache", prepare, decode, "< 30 s"),
        (f"np.load train {shape} (baseline)", npy, npy, ""),
        ("load_splits train+test (memory-mapped)", mapped, npy, "< 1 s"),
    ]
    print(f"{'step':<44} {'median s':>9} {'x baseline':>11} {'target':>8}")
    for name, seconds, baseline, target in rows:
        print(f"{name:<44} {seconds:>9.3f} {seconds / baseline:>11.2f} {target:>8}")


if __name__ == "__main__":
    main()
