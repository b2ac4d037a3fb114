"""Ray's overhead per meta-step: Driver.gradient against share_gradient over the whole meta-batch in one process.

    PYTHONPATH=. .venv/bin/python benchmarks/ray_overhead.py [--repeats 5] [--set model.width=8 ...]

Prints, per config and worker count, the median step time of each path (after one warm-up
step) and their ratio. Both paths compute the same gradient from the same tasks.
"""

import argparse
import statistics
import time

import ray
import torch

import data
from cluster.driver import Driver, connect
from meta_core.build import build_learner, build_source, vectorized
from meta_core.flat import flatten, layout_of
from meta_core.models import init_params
from meta_core.step import share_gradient
from pipelines.config import load


def median_ms(step, repeats: int) -> float:
    step(0)  # warm-up: actor start, first-call allocations
    times = []
    for i in range(1, repeats + 1):
        started = time.perf_counter()
        step(i)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(name: str, overrides: list[str], repeats: int) -> list[tuple]:
    config = load(name, overrides)
    splits = {"train": None, "test": None}
    if config["data"]["name"] != "sinusoid":
        splits = data.load_splits(data.prepare(config))
    algo = build_learner(config)
    algo.track_pre_adapt = False  # as workers do on all but every train.pre_adapt_every-th step
    params = algo.init(init_params(algo.model, config["seed"]))
    layout, flat = layout_of(params), flatten(params).detach()
    vectorize = vectorized(config, on_gpu=False)
    source, meta_batch = build_source(config, splits["train"]), range(config["train"]["meta_batch"])
    torch.set_num_threads(1)  # as one worker does: the comparison is per-step overhead, not extra cores
    local = median_ms(lambda step: share_gradient(algo, source, flat, layout, config["seed"], step, meta_batch, vectorize), repeats)
    rows = []
    for workers in (1, 2):
        config["cluster"]["workers"] = workers
        driver = Driver(config, splits, layout)
        try:
            distributed = median_ms(lambda step: driver.gradient(flat.numpy(), step), repeats)
        finally:
            driver.shutdown()
        rows.append((name, workers, config["train"]["meta_batch"], local, distributed, distributed / local))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    connect(None)
    rows = [row for name in ("sinusoid", "omniglot") for row in measure(name, args.overrides, args.repeats)]
    ray.shutdown()
    print(f"{'config':<10} {'workers':>7} {'tasks':>5} {'one process ms':>14} {'ray ms':>9} {'ratio':>6}")
    for name, workers, tasks, local, distributed, ratio in rows:
        print(f"{name:<10} {workers:>7} {tasks:>5} {local:>14.1f} {distributed:>9.1f} {ratio:>6.2f}")


if __name__ == "__main__":
    main()
