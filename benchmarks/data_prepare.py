"""Preparing both shared Omniglot zips (target < 30 s) and loading a prepared split (target < 1 s).

Each row is the median of ``--repeats`` runs; the ratio is against a baseline timed in
the same run: decoding the zips alone for prepare, ``np.load`` of the same arrays for load.

    .venv/bin/python benchmarks/data_prepare.py
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import data
from data import omniglot
from pipelines.config import CONFIG_DIR, load

OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


def median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    zips = sorted(OMNIGLOT.glob("*.zip"))
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(args.repeats * 2))
        config = load(str(CONFIG_DIR / "omniglot.yaml"), [f"data.source={OMNIGLOT}"])

        def prepare_cold() -> Path:
            config["data"]["cache_dir"] = f"{tmp}/cache{next(counter)}"  # an empty cache: a full build every time
            return data.prepare(config)

        decode = median_s(lambda: [omniglot.read(z, 28) for z in zips], args.repeats)
        prepare = median_s(prepare_cold, args.repeats)
        folder = prepare_cold()
        splits = data.load_splits(folder)
        np.save(f"{tmp}/train.npy", splits["train"])
        npy = median_s(lambda: np.load(f"{tmp}/train.npy"), args.repeats)
        parquet = median_s(lambda: data.load_splits(folder), args.repeats)
    shape = "x".join(map(str, splits["train"].shape))
    rows = [
        ("decode both zips (baseline)", decode, decode, ""),
        ("prepare both zips, empty cache", prepare, decode, "< 30 s"),
        (f"np.load train {shape} (baseline)", npy, npy, ""),
        ("load_splits train+test (Parquet)", parquet, npy, "< 1 s"),
    ]
    print(f"{'step':<44} {'median s':>9} {'x baseline':>11} {'target':>8}")
    for name, seconds, baseline, target in rows:
        print(f"{name:<44} {seconds:>9.3f} {seconds / baseline:>11.2f} {target:>8}")


if __name__ == "__main__":
    main()
