"""What the bitwise guarantee costs: tasks/s of the pipeline before and after fixed micro-batches, in one run.

"Before" is the code at the git revision ``--before`` (by default the last
commit before fixed micro-batches and the ordered reduction), exported into a
temporary folder; "after" is this checkout. Each row is
``benchmarks.throughput``'s ``ray`` mode (driver aggregation, the config's own
``train.micro_batch``) in a fresh process run from that code, on the sinusoid
and Omniglot workloads at 1 and 2 workers. The two sides alternate within each
of ``--rounds`` rounds, so that both see the machine's load drift alike; the
table gives each side's median tasks/s over the rounds and the after/before
ratio within each round, median and range.

    OMNIGLOT_DIR=... .venv/bin/python -m benchmarks.determinism [--rounds 3] [--steps 5] [--set KEY=VALUE ...]
"""

import argparse
import statistics
import subprocess
import tarfile
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, in_fresh_process
from benchmarks.run import SINUSOID_STEPS, WORKLOADS

BEFORE = "2323902"  # the last commit without micro-batches


def exported(revision: str, folder: Path) -> Path:
    """The tracked files of ``revision``, written under ``folder`` (no worktree is registered)."""
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True).stdout
    target = folder / revision
    target.mkdir()
    with tempfile.TemporaryFile() as tar:
        tar.write(archive)
        tar.seek(0)
        tarfile.open(fileobj=tar).extractall(target, filter="data")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help="git revision of the code before")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed meta-steps per row after two warm-up steps (10x both for the sinusoid)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workloads", nargs="+", default=["sinusoid", "omniglot"], choices=["sinusoid", "omniglot"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override, both sides")
    args = parser.parse_args()
    cache = f"data.cache_dir={ROOT / 'data' / 'cache'}"  # both sides read one prepared Omniglot
    with tempfile.TemporaryDirectory() as folder:
        sides = {"before": exported(args.before, Path(folder)), "after": ROOT}
        lines = [
            f"driver aggregation, tasks/s (median of {args.rounds} rounds, the sides in turn within each), before = {args.before}, "
            f"overrides {args.overrides or 'none'}",
            f"{'workload':<10} {'workers':>7} {'before':>9} {'after':>9} {'after/before (range)':>22}",
        ]
        for name in args.workloads:
            scale = SINUSOID_STEPS if name == "sinusoid" else 1
            for workers in args.workers:
                spec = {"workload": name, "mode": "ray", "workers": workers, "steps": args.steps * scale, "warmup": 2 * scale}
                spec["overrides"] = [cache, *args.overrides]
                rates = {side: [] for side in sides}
                for _ in range(args.rounds):
                    for side, checkout in sides.items():
                        rates[side].append(WORKLOADS[name] / in_fresh_process("benchmarks.throughput", spec, checkout)["step_s"])
                ratios = [after / before for before, after in zip(rates["before"], rates["after"], strict=True)]
                lines.append(
                    f"{name:<10} {workers:>7} {statistics.median(rates['before']):>9.1f} {statistics.median(rates['after']):>9.1f} "
                    f"{statistics.median(ratios):>8.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
                )
                print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
