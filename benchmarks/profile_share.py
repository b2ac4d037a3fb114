"""Where a share's time goes in a Ray worker against this process: the same share, profiled in both.

The pipeline's worker class is built twice from one config: as the Ray actor a
``Driver`` starts, and as a plain object in this process. Each computes the whole
meta-batch, in its micro-batches, ``--steps`` times after two warm-up steps, under
``torch.profiler``; the table lists the operators whose self time per step
differs most between the two (CPU, and on CUDA device time too). A gap such as
Omniglot's on the H100 (86 ms a step through a worker against 48 ms in-process)
then shows where it is, or that no operator holds it.

    .venv/bin/python -m benchmarks.profile_share [--workload omniglot] [--device cuda] [--steps 5] [--set KEY=VALUE ...]
"""

import argparse
import statistics
import time

import ray
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import workload
from cluster.driver import Driver, connect
from cluster.pool import micro_batches
from cluster.worker import MetaWorker, to_wire
from meta_core.models import flatten, layout_of
from pipelines.build import build_learner, worker_setup

WARMUP = 2  # steps: the first takes any compiling, and step 0 the pre-adaptation variant


def profiled_shares(worker, flat, micro_batches: list[list[int]], steps: int) -> dict:
    """Median wall ms of ``worker.micro_batch_gradients`` over the whole meta-batch, and per operator its calls and self
    CPU and device ms, each per step. Runs wherever ``worker`` lives: in an actor through ``__ray_call__``, or here."""
    for step in range(WARMUP):
        worker.micro_batch_gradients(flat, step, micro_batches)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if worker.device.type == "cuda" else [])
    walls = []
    with profile(activities=activities) as prof:
        for step in range(WARMUP, WARMUP + steps):
            started = time.perf_counter()
            worker.micro_batch_gradients(flat, step, micro_batches)  # ends with the sum copied to the host: the device is done
            walls.append(time.perf_counter() - started)
    ops = {e.key: (e.count / steps, e.self_cpu_time_total / 1e3 / steps, e.self_device_time_total / 1e3 / steps) for e in prof.key_averages()}
    return {"wall_ms": 1e3 * statistics.median(walls), "ops": ops}


def table(here: dict, worker: dict, meta_batch: int, top: int = 15) -> list[str]:
    """Both walls, the per-step totals, and the ``top`` operators by their largest difference."""
    none = (0.0, 0.0, 0.0)

    def row(name: str, a: tuple, b: tuple) -> str:
        calls = f"{a[0] or b[0]:>6.0f}" if a[0] or b[0] else f"{'':>6}"
        return f"{name[:44]:<44} {calls} {a[1]:>9.2f} {b[1]:>8.2f} {b[1] - a[1]:>+8.2f} {a[2]:>9.2f} {b[2]:>8.2f} {b[2] - a[2]:>+8.2f}"

    def totals(side: dict) -> tuple:
        return 0, sum(op[1] for op in side["ops"].values()), sum(op[2] for op in side["ops"].values())

    def outside(side: dict, total: tuple) -> tuple:  # Python between operators, and waits
        return 0, side["wall_ms"] - total[1], 0.0

    def gap(name: str) -> float:
        a, b = here["ops"].get(name, none), worker["ops"].get(name, none)
        return max(abs(b[1] - a[1]), abs(b[2] - a[2]))

    here_total, worker_total = totals(here), totals(worker)
    lines = [
        f"one share of the whole meta-batch ({meta_batch} tasks), median ms: in this process {here['wall_ms']:.2f}, "
        f"in a Ray worker {worker['wall_ms']:.2f} ({worker['wall_ms'] - here['wall_ms']:+.2f})",
        f"{'operator (self time, ms per step)':<44} {'calls':>6} {'cpu here':>9} {'worker':>8} {'diff':>8} {'dev here':>9} {'worker':>8} {'diff':>8}",
        row("all operators", here_total, worker_total),
        row("outside operators (wall - their CPU time)", outside(here, here_total), outside(worker, worker_total)),
    ]
    for name in sorted(set(here["ops"]) | set(worker["ops"]), key=gap, reverse=True)[:top]:
        lines.append(row(name, here["ops"].get(name, none), worker["ops"].get(name, none)))
    return lines


def measure(name: str, device: str = "cpu", steps: int = 5, overrides=(), width: int = 64) -> tuple[dict, dict, int]:
    """``profiled_shares`` in this process and in a Ray worker, and the meta-batch."""
    config, splits = workload(name, width, 1, device, overrides)
    meta_batch, setup = config.train.meta_batch, worker_setup(config)
    params = build_learner(config).initial_params(config.seed)
    flat, layout = to_wire(flatten(params).numpy()), layout_of(params)  # as the driver sends them
    connect(None)
    driver = Driver(setup, config.cluster, splits, layout)
    batches = micro_batches(meta_batch, setup.micro_batch)
    in_worker = ray.get(driver.workers[0].__ray_call__.remote(profiled_shares, flat, batches, steps))
    driver.shutdown()
    here = profiled_shares(MetaWorker(setup, splits, layout), flat, batches, steps)
    return here, in_worker, meta_batch


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["sinusoid", "omniglot"], default="omniglot")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--width", type=int, default=64, help="conv4 filters (omniglot)")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps on each side, after two warm-up steps")
    parser.add_argument("--top", type=int, default=15, help="operators listed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    args = parser.parse_args()
    print("\n".join(table(*measure(args.workload, args.device, args.steps, args.set, args.width), args.top)))
