"""Where all-reduce aggregation starts to pay: ``Driver.steps`` vs ``AllreduceDriver.steps`` by model size and workers.

Only the communication and the outer step are timed. The workers are the
pipeline's own actors with ``micro_batch_gradient`` replaced by a fixed gradient
of the model's size, so the per-task computation costs nothing; everything else
is the real path, one meta-step a call, one micro-batch per worker: the driver
path puts the float32 parameters into the object store, makes one call per
worker, adds their float64 gradients in micro-batch order and takes the Adam
step; the all-reduce group gathers its float64 gradients (gloo), every rank adds
them in micro-batch order and takes the Adam step, and rank 0 sends back the
parameters and Adam's two moments. For each size both drivers are alive at once and measured one after
the other, so both see the same machine.

    .venv/bin/python -m benchmarks.aggregation [--quick] [--workers 2 4] [--steps 15]

With ``RAY_ADDRESS`` set it runs on that cluster (``simulated_cluster.sh``: nodes behind shaped links).
"""

import argparse
import json

import numpy as np
import ray
import torch

from benchmarks.common import in_fresh_process, median_seconds
from cluster.allreduce import AllreduceDriver, AllreduceWorker
from cluster.driver import Driver, connect
from cluster.worker import MetaWorker

SIZES = [100_000, 300_000, 1_000_000, 3_000_000, 10_000_000, 20_000_000]  # parameters
QUICK_SIZES = [100_000, 1_000_000, 10_000_000]
PAYS = 0.9  # all-reduce s / driver s below which it counts as faster: under the ±10-20% noise between runs, no claim


def fixed_gradient(self, params: torch.Tensor, step: int, indices: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
    """A micro-batch that costs nothing: the same float64 gradient of ``params``' size every call."""
    if getattr(self, "fixed", torch.empty(0)).numel() != params.numel():
        self.fixed = torch.ones(params.numel(), dtype=torch.float64)
    return self.fixed, {}


class FreeWorker(MetaWorker):
    micro_batch_gradient = fixed_gradient


class FreeAllreduceWorker(AllreduceWorker):
    micro_batch_gradient = fixed_gradient


def measure(spec: dict) -> dict:
    """Median seconds of one meta-step's aggregation, per size, for both paths at ``spec['workers']`` workers."""
    from pipelines.build import outer_loop, worker_setup
    from pipelines.config import CONFIG_DIR, load

    workers = spec["workers"]
    # two drivers of `workers` workers share the machine's CPUs; meta-batch 25 gives every worker a share
    per_worker = f"train.micro_batch={-(-25 // workers)}"  # the meta-batch of 25 as one micro-batch per worker
    config = load(str(CONFIG_DIR / "sinusoid.yaml"), [f"cluster.workers={workers}", f"cluster.num_cpus={1 / workers}", per_worker])
    splits, rows = {"train": None, "test": None}, []
    connect(None)
    setup = worker_setup(config)
    for size in spec["sizes"]:
        layout = [("flat", (size,))]  # one parameter vector of that size
        drivers = [
            Driver(setup, config.cluster, splits, layout, FreeWorker),
            AllreduceDriver(setup, config.cluster, splits, layout, FreeAllreduceWorker),
        ]
        seconds = []
        for d in drivers:
            flat = torch.from_numpy(np.random.default_rng(size).standard_normal(size, dtype=np.float32))
            optimizer = outer_loop(config).make_optimizer(flat)
            seconds.append(
                median_seconds(lambda i, d=d, flat=flat, optimizer=optimizer: d.steps(flat, optimizer, i, 1), spec["steps"], spec["warmup"])
            )
        rows.append({"params": size, "driver_s": seconds[0], "allreduce_s": seconds[1]})
        for d in drivers:
            d.shutdown()
    ray.shutdown()
    return {"rows": rows}


def crossover(rows: list[dict]) -> str:
    """The smallest size from which all-reduce is faster (by PAYS) at every larger size measured."""
    paying = None
    for row in reversed(rows):
        if row["allreduce_s"] >= PAYS * row["driver_s"]:
            break
        paying = row["params"]
    return f"{paying / 1e6:g}M parameters" if paying else f"none up to {rows[-1]['params'] / 1e6:g}M parameters"


def table(worker_counts: list[int], sizes: list[int], steps: int, warmup: int) -> list[str]:
    lines = [
        "aggregation only (gradients summed, the Adam step, parameters back; share computation replaced by a fixed gradient), "
        f"median of {steps} meta-steps after {warmup} warm-up, both paths in this run",
        f"{'workers':>7} {'params':>10} {'MB/grad':>8} {'driver s':>9} {'allreduce s':>11} {'allr/driver':>11}",
    ]
    for workers in worker_counts:
        spec = {"workers": workers, "sizes": sizes, "steps": steps, "warmup": warmup}
        rows = in_fresh_process("benchmarks.aggregation", spec)["rows"]
        for r in rows:
            lines.append(
                f"{workers:>7} {r['params']:>10,} {4 * r['params'] / 1e6:>8.1f} {r['driver_s']:>9.4f} "
                f"{r['allreduce_s']:>11.4f} {r['allreduce_s'] / r['driver_s']:>11.2f}"
            )
        lines.append(f"{workers:>7} workers: all-reduce at least {1 - PAYS:.0%} faster from {crossover(rows)}")
    return lines


def sweep(quick: bool, workers: tuple[int, ...] = (2, 4), steps: int = 15) -> list[str]:
    """The table at each of ``workers`` over SIZES (about 2 minutes on 2 cores at 2 and 4), or a smoke run."""
    if quick:
        return table([2], QUICK_SIZES, steps=3, warmup=1)
    return table(list(workers), SIZES, steps=steps, warmup=3)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 workers, three sizes up to 10M, 3 steps: a smoke run")
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4], help="worker counts, one table block each")
    parser.add_argument("--steps", type=int, default=15, help="timed meta-steps per size and path, after 3 warm-up")
    parser.add_argument("--measure", help="a JSON spec: workers, sizes, steps, warmup (one fresh-process measurement)")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
    else:
        print("\n".join(sweep(args.quick, tuple(args.workers), args.steps)))
