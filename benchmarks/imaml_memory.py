"""Peak memory of one task's meta-gradient against the number of inner steps: MAML vs iMAML.

MAML keeps every inner step's activations for the backward pass, so its memory
grows with the steps; iMAML never differentiates its inner loop, so it should
stay flat. Each measurement runs in a fresh process: on CPU the figure is the
growth of the peak resident set during ``task_grad``, on CUDA the growth of the
peak allocated memory.

    .venv/bin/python benchmarks/imaml_memory.py [--steps 1 4 16] [--width 32] [--repeats 3] [--device cuda]
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(algorithm: str, steps: int, width: int, device: str) -> dict:
    """Extra peak memory (MiB) and seconds of one ``task_grad`` with ``steps`` inner steps, in this process."""
    import numpy as np
    import torch

    from meta_core.algorithms import build_algorithm
    from meta_core.models import build_model, init_params
    from meta_core.tasks import ClassificationTasks, task_rng

    torch.set_num_threads(1)
    images = np.random.default_rng(0).random((10, 20, 28, 28), dtype=np.float32)
    task = ClassificationTasks(images, ways=5, shots=5, queries=15).sample(task_rng(0, 0, 0, 0)).to(device)
    model = build_model("conv4", ways=5, width=width).to(device)
    algo = build_algorithm(algorithm, model, "classification", inner_steps=steps, inner_lr=0.1)
    params = {k: v.to(device) for k, v in algo.init(init_params(model, 0)).items()}
    algo.loss(params, task.support_x, task.support_y)  # load kernels before the baseline
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    algo.task_grad(params, task)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"mib": (peak - base) / 2**20, "s": time.perf_counter() - started}


def in_fresh_process(algorithm: str, steps: int, width: int, device: str) -> dict:
    args = [sys.executable, __file__, "--measure", algorithm, str(steps), "--width", str(width), "--device", device]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--measure", nargs=2, metavar=("ALGORITHM", "STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]), args.width, args.device)))
        return
    print(f"5-way 5-shot, 15 queries, conv4 width {args.width}, {args.device}; medians of {args.repeats} fresh processes")
    print(f"{'inner steps':>11} {'MAML MiB':>9} {'iMAML MiB':>9} {'iMAML/MAML':>10} {'MAML s':>7} {'iMAML s':>7}")
    for steps in args.steps:
        row = {}
        for algorithm in ("maml", "imaml"):
            runs = [in_fresh_process(algorithm, steps, args.width, args.device) for _ in range(args.repeats)]
            row[algorithm] = {k: statistics.median(r[k] for r in runs) for k in ("mib", "s")}
        maml, imaml = row["maml"], row["imaml"]
        ratio = imaml["mib"] / maml["mib"] if maml["mib"] > 0 else float("nan")
        print(f"{steps:>11} {maml['mib']:>9.1f} {imaml['mib']:>9.1f} {ratio:>10.2f} {maml['s']:>7.3f} {imaml['s']:>7.3f}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
