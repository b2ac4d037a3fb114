"""Peak memory of one task's meta-gradient against the number of inner steps: MAML vs iMAML.

MAML keeps every inner step's activations for the backward pass, so its memory
grows with the steps; iMAML never differentiates its inner loop, so it should
stay flat. Each measurement runs in a fresh process, as ``benchmarks/memory.py``
measures: the peak of memory in use during ``task_gradient`` above what was in use
before it (glibc's heap on CPU, where the resident set would hide freed and
reused pages; the allocator's on CUDA).

    .venv/bin/python benchmarks/imaml_memory.py [--steps 1 4 16] [--width 32] [--repeats 3] [--device cuda]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(algorithm: str, steps: int, width: int, device: str) -> dict:
    """Extra peak memory (MiB) and seconds of one ``task_gradient`` with ``steps`` inner steps, in this process."""
    import torch

    from benchmarks.memory import conv4_learner, extra_peak_mib, shaped_task

    torch.set_num_threads(1)
    task = shaped_task(5, 15, device)
    algo, params = conv4_learner(algorithm, steps, 0.1, width, device)
    algo.task_gradient(params, shaped_task(5, 1, device))  # load every kernel before the baseline
    started = time.perf_counter()
    mib = extra_peak_mib(lambda: algo.task_gradient(params, task), device)
    return {"mib": mib, "s": time.perf_counter() - started}


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
