"""Wall seconds of training until held-out Omniglot 5-way 1-shot accuracy first reaches a target.

Baseline and pipeline train from the same initial weights with the same
hyperparameters (configs/omniglot.yaml: inner lr 0.4, one second-order inner
step, meta-batch 32, Adam 1e-3) on the same tasks, and are evaluated by the same
function on the same fixed held-out tasks (alphabets never trained on), after one
adaptation step, every ``eval_every`` steps. The clock stops while evaluating.
``compile`` puts the side's meta-gradient through ``torch.compile`` (the
pipeline's workers with ``train.compile``, the baseline's query pass), and
``reuse_memory`` gives the baseline the heap setting every worker makes. Each
side warms up before its clock starts, so that compiling (about a minute per
worker on CPU, seconds from inductor's disk cache) and starting the workers
are not counted: the baseline with one task's meta-gradient, the pipeline with
its first two steps (both compiled variants) on a copy of the weights it then
drops. ``warmup_s`` says what that took.

    .venv/bin/python -m benchmarks.time_to_accuracy --measure '{"side": "pipeline", "target": 0.9}'
"""

import argparse
import json
import time

import torch

from benchmarks.common import finished, workload

DEFAULTS = {
    "target": 0.9, "width": 64, "max_minutes": 60.0, "eval_every": 25, "eval_tasks": 100, "workers": 2, "device": "cpu", "compile": False,
    "reuse_memory": False,
}  # fmt: skip


def measure(spec: dict) -> dict:
    """``seconds`` to the target (None if not reached within ``max_minutes``), steps taken, the accuracy curve and
    the warm-up seconds; for a compiled baseline that torch cannot compile, its reason (``failure``) instead."""
    from benchmarks.baseline import BaselineMAML, warm_up
    from cluster.driver import Driver, connect
    from cluster.worker import reuse_freed_memory
    from meta_core.models import flatten, layout_of
    from meta_core.step import draw, evaluate_tasks
    from meta_core.tasks import TEST, TRAIN
    from pipelines.build import build_learner, outer_loop, task_source, worker_setup

    spec = {**DEFAULTS, **spec}
    config, splits = workload("omniglot", spec["width"], spec["workers"], spec["device"], [f"train.compile={str(spec['compile']).lower()}"])
    train, seed, device = config.train, config.seed, torch.device(spec["device"])
    algo = build_learner(config)
    params = algo.initial_params(seed)
    layout, flat = layout_of(params), flatten(params).clone()
    sources = {name: task_source(config, images, name) for name, images in splits.items()}
    algo.model.to(device)  # evaluation runs where training does
    started = time.perf_counter()
    if spec["side"] == "baseline":
        if spec["reuse_memory"]:
            reuse_freed_memory()
        weights = [w.to(device) for w in params.values()]
        baseline = BaselineMAML("conv4", weights, config.algorithm.inner_lr, 1, train.outer_lr, compiled=spec["compile"])
        failure = warm_up(baseline, draw(sources["train"], seed, TRAIN, 0, [0], device)[0])
        if failure:
            return {"failure": failure}
        step = lambda i: baseline.step(draw(sources["train"], seed, TRAIN, i, range(train.meta_batch), device))  # noqa: E731
        current = lambda: torch.cat([w.detach().reshape(-1) for w in baseline.weights])  # noqa: E731
    else:
        connect(None)
        driver = Driver(worker_setup(config), config.cluster, splits, layout)
        copy = flat.clone()
        driver.steps(copy, outer_loop(config).make_optimizer(copy), 0, 2)
        optimizer = outer_loop(config).make_optimizer(flat)

        step = lambda i: driver.steps(flat, optimizer, i, 1)  # noqa: E731
        current = lambda: flat.detach().to(device)  # noqa: E731
    finished(spec["device"])
    warmup_s = time.perf_counter() - started
    trained, curve, reached = 0.0, [], None
    for i in range(1_000_000):
        started = time.perf_counter()
        step(i)
        finished(spec["device"])
        trained += time.perf_counter() - started
        if (i + 1) % spec["eval_every"] == 0:
            per_task = evaluate_tasks(algo, sources["test"], current(), layout, seed, TEST, range(spec["eval_tasks"]), [1])
            curve.append((i + 1, round(trained, 1), round(float(per_task["steps1_acc"].mean()), 4)))
            if curve[-1][2] >= spec["target"]:
                reached = trained
                break
        if trained > 60 * spec["max_minutes"]:
            break
    best = max((c[2] for c in curve), default=None)
    return {"seconds": reached, "steps": i + 1, "trained_s": trained, "best_acc": best, "curve": curve, "warmup_s": warmup_s}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", required=True, help="a JSON spec: side (baseline|pipeline) and any of " + ", ".join(DEFAULTS))
    print(json.dumps(measure(json.loads(parser.parse_args().measure))))
