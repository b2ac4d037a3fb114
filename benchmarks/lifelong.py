"""Lifelong learning's two costs: meta-training trajectories per second, and the meta-test grid's wall time.

OML on the two small Omniglot background sets (28x28, four 3x3 convolutions of 32 filters, a head of 150 rows;
trajectories of 3 classes x 5 images with 5 new images each and 15 to remember, second order), through the
pipeline's own session: the driver and ``workers`` Ray workers of one thread each. A meta-batch of 4 trajectories
a step, so that two workers share it; the rate is the median over ``repeats`` timings of ``steps`` steps. The
meta-test grid is ``runs`` runs of 50 new classes (15 images each, learned one at a time) at 3 inner rates,
scored after 10 and 50 classes, spread over the workers; its wall time is the median of ``repeats``.

    OMNIGLOT_DIR=/path/to/zips .venv/bin/python -m benchmarks.lifelong
"""

import argparse
import os
import statistics
import time

from benchmarks.common import SMALL_SETS

OVERRIDES = [
    "data.split=group", "data.test_size=3", "data.rotations=false", "algorithm.name=oml", "model.name=oml_conv", "model.width=32", "model.strides=[2, 1, 2, 1]",
    "task.ways=3", "task.shots=5", "task.queries=5", "algorithm.remember=15", "algorithm.classes=150", "algorithm.inner_lr=0.03",
    "algorithm.test_lrs=[0.1, 0.03, 0.01]", "eval.steps=[10, 50]", "register.metric=eval_steps10_acc", "train.meta_batch=4", "train.compile=false",
]  # fmt: skip


def measure(workers: int, steps: int, runs: int, repeats: int) -> dict[str, float]:
    import data
    from cluster.driver import connect
    from pipelines.build import prepared
    from pipelines.config import load
    from pipelines.session import Session

    config = load("omniglot", [f"data.source={os.environ.get('OMNIGLOT_DIR') or SMALL_SETS}", *OVERRIDES, f"cluster.workers={workers}"])
    connect(None)
    with Session.from_config(config, data.load_splits(prepared(config))) as session:
        session.steps(0, 2)  # the workers started, and warm
        step_s, grid_s = [], []
        for repeat in range(repeats):
            started = time.perf_counter()
            session.steps(2 + repeat * steps, steps)
            step_s.append((time.perf_counter() - started) / steps)
        for _ in range(repeats):
            started = time.perf_counter()
            session.evaluate_split("test", runs, [10, 50])
            grid_s.append(time.perf_counter() - started)
    return {"trajectories_per_s": config.train.meta_batch / statistics.median(step_s), "grid_s": statistics.median(grid_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = {workers: measure(workers, args.steps, args.runs, args.repeats) for workers in (1, 2)}
    print(f"{'workers':>7}  {'trajectories/s':>14}  {'grid wall s':>11}")
    for workers, row in rows.items():
        print(f"{workers:>7}  {row['trajectories_per_s']:>14.1f}  {row['grid_s']:>11.1f}")
    one, two = rows[1], rows[2]
    print(f"{'2 / 1':>7}  {two['trajectories_per_s'] / one['trajectories_per_s']:>13.2f}x  {one['grid_s'] / two['grid_s']:>10.2f}x faster")


if __name__ == "__main__":
    main()
