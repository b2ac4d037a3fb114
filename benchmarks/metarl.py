"""Meta-RL sampling throughput: environment steps per second of whole meta-steps at 1 and 2 workers, and where a
meta-step's time goes (sampling: stepping environments, the policy's forward passes, baselines and inner steps;
then the meta-gradient).

Each row starts its own Ray, one thread per worker, and times ``steps`` meta-steps after ``warmup`` (medians). The
workload is ProMP on HalfCheetahDir at ProMP's per-task scale (20 episodes of 100 steps per round, a 64-64 policy)
with a meta-batch of ``meta_batch`` tasks in micro-batches of ``micro_batch`` (the tasks a worker steps as one batch
of environments), and ``outer_steps`` outer steps per sampled batch.

    .venv/bin/python -m benchmarks.metarl --workers 1 2
"""

import argparse
import json
import statistics
import time


def measure(workers: int, config_name: str, meta_batch: int, micro_batch: int, outer_steps: int, steps: int, warmup: int) -> dict:
    import ray

    from cluster.driver import connect
    from pipelines.config import load
    from pipelines.pipeline import load_splits
    from pipelines.session import Session

    overrides = [
        f"cluster.workers={workers}",
        f"train.meta_batch={meta_batch}",
        f"train.micro_batch={micro_batch}",
        f"algorithm.outer_steps={outer_steps}",
    ]
    config = load(config_name, overrides)
    connect(None)
    try:
        with Session.from_config(config, load_splits({"dataset": None})) as session:
            rows = []
            for step in range(warmup + steps):
                started = time.perf_counter()
                (metrics,) = session.steps(step, 1)
                rows.append((time.perf_counter() - started, metrics))
    finally:
        ray.shutdown()
    timed = rows[warmup:]
    step_s = statistics.median(s for s, _ in timed)
    per_task = {k: statistics.median(m[k] for _, m in timed) for k in ("env_steps", "sample_s", "env_s", "policy_s", "grad_s")}
    env_steps = per_task["env_steps"] * meta_batch
    return {
        "config": config_name, "workers": workers, "meta_batch": meta_batch, "micro_batch": micro_batch, "outer_steps": outer_steps,
        "step_s": round(step_s, 3), "env_steps": int(env_steps), "env_steps_per_s": round(env_steps / step_s),
        "env_only_steps_per_s": round(per_task["env_steps"] / per_task["env_s"]),  # one worker's environments alone
        "sampling_share": round(per_task["sample_s"] / (per_task["sample_s"] + per_task["grad_s"]), 3),
        "env_share_of_sampling": round(per_task["env_s"] / per_task["sample_s"], 3),
        "policy_share_of_sampling": round(per_task["policy_s"] / per_task["sample_s"], 3),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--config", default="halfcheetah_dir")
    parser.add_argument("--meta-batch", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--outer-steps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    for workers in args.workers:
        row = measure(workers, args.config, args.meta_batch, args.micro_batch, args.outer_steps, args.steps, args.warmup)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
