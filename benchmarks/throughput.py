"""Seconds per meta-step, tasks/s, bytes moved and peak memory: baseline vs our pipeline.

Each row is measured in a fresh process. ``baseline`` is benchmarks/baseline.py
with torch's default threads (all cores); ``loop``/``vmap`` are meta_core's share
computation in-process on one thread (what one worker does, without Ray);
``ray`` is the full driver + workers path at ``workers`` workers of one thread
each, with the workers' automatic loop/vmap choice; with ``per_call`` above 1,
it is the all-reduce path running that many meta-steps per call
(``cluster.steps_per_call``). Workers keep freed memory for reuse
(``cluster.worker.reuse_freed_memory``), and so do the in-process rows;
``reuse_memory`` gives the baseline the same setting, to show what it alone is
worth, and ``compile`` puts the baseline's query pass through ``torch.compile``
(the other modes follow the config's ``train.compile``). Every step includes
drawing its tasks and the Adam update; the two warm-up steps take any compiling
(``train.compile``, each pre-adaptation variant). A compiled baseline that torch
cannot compile gives its reason (``failure``) instead of times.

    .venv/bin/python -m benchmarks.throughput --measure '{"workload": "sinusoid", "mode": "ray", "workers": 2}'
"""

import argparse
import json

import torch

from benchmarks.common import median_seconds, peak_gpu_mib, peak_rss_mib, workload

DEFAULTS = {
    "workers": 1,
    "per_call": 1,
    "threads": 0,
    "steps": 5,
    "warmup": 2,
    "width": 64,
    "device": "cpu",
    "reuse_memory": False,
    "compile": False,
    "overrides": [],
}


def task_gflop(baseline, task) -> float:
    """GFLOP of one task's second-order meta-gradient (forward, inner backward, outer double backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        baseline.meta_gradient([task])
    return counter.get_total_flops() / 1e9


def measure(spec: dict) -> dict:
    """One row: median step seconds, peak RSS (and CUDA memory) of the busiest process, bytes crossing processes per
    step; for the pipeline, also the median seconds of an empty call to a worker (Ray's bare round trip)."""
    from benchmarks.baseline import BaselineMAML, warm_up
    from cluster.driver import connect, make_driver
    from cluster.worker import reuse_freed_memory
    from meta_core.models import flatten, layout_of
    from meta_core.step import draw, micro_batch_gradient
    from meta_core.tasks import TRAIN
    from pipelines.build import build_learner, outer_loop, task_source, worker_setup

    spec = {**DEFAULTS, **spec}
    per_call, overrides = spec["per_call"], spec["overrides"]
    if per_call > 1:
        overrides = [*overrides, "cluster.aggregation=allreduce", f"cluster.steps_per_call={per_call}"]
    config, splits = workload(spec["workload"], spec["width"], spec["workers"], spec["device"], overrides)
    train, seed, device = config.train, config.seed, torch.device(spec["device"])
    if spec["threads"]:  # else torch's default, as in the pipeline's driver: setting it there starts OpenMP
        torch.set_num_threads(spec["threads"])  # threads that spin-wait on the cores the workers compute on
    if spec["reuse_memory"] or spec["mode"] in ("loop", "vmap"):
        reuse_freed_memory()
    algo = build_learner(config)
    params = algo.initial_params(seed)
    flat, layout = flatten(params).clone(), layout_of(params)
    source = task_source(config, splits["train"])
    tasks = range(train.meta_batch)
    result = {"bytes": 0, "worker_mib": 0.0, "gpu_mib": 0.0}
    if spec["mode"] == "baseline":
        weights = [w.to(device) for w in params.values()]
        baseline = BaselineMAML(config.model.name, weights, config.algorithm.inner_lr, algo.inner_steps, train.outer_lr, compiled=spec["compile"])
        first = draw(source, seed, TRAIN, 0, [0], device)[0]
        failure = warm_up(baseline, first)
        if failure:
            return {"failure": failure}
        if not spec["compile"]:  # the counter's dispatch mode would be traced into the compiled graph
            result["task_gflop"] = task_gflop(baseline, first)
        step = lambda i: baseline.step(draw(source, seed, TRAIN, i, tasks, device))  # noqa: E731
    elif spec["mode"] in ("loop", "vmap"):  # what one worker does, in this process
        algo.model.to(device)
        flat = flat.to(device)
        optimizer = outer_loop(config).make_optimizer(flat)

        def step(i: int) -> None:  # without pre-adaptation metrics, as workers on all but every train.pre_adapt_every-th step
            grad, _ = micro_batch_gradient(algo, source, flat, layout, seed, i, tasks, spec["mode"] == "vmap", train.compile, pre_adapt=False)
            flat.grad = (grad / train.meta_batch).float()
            optimizer.step()
    else:
        import ray

        connect(None)
        driver = make_driver(worker_setup(config), config.cluster, splits, layout)
        optimizer = outer_loop(config).make_optimizer(flat)

        step = lambda i: driver.steps(flat, optimizer, i * per_call, per_call)  # noqa: E731
        n, workers, parts = flat.numel(), spec["workers"], len(driver.micro_batches)
        if per_call == 1:  # parameters to each worker with micro-batches (float32), one float64 gradient back per micro-batch
            result["bytes"] = 4 * n * min(workers, parts) + 8 * n * parts
        else:  # parameters and optimizer state back from rank 0 once a call; each rank's micro-batch gradients (float64,
            held = 3 if train.optimizer == "adam" else 1  # padded to the most any rank has) to every other rank
            result["bytes"] = held * 4 * n / per_call + 8 * n * -(-parts // workers) * workers * (workers - 1)
    result["step_s"] = median_seconds(step, spec["steps"], spec["warmup"], spec["device"]) / per_call
    result["gpu_mib"] = peak_gpu_mib()
    if spec["mode"] == "ray":
        peaks = ray.get([w.__ray_call__.remote(lambda worker: (peak_rss_mib(), peak_gpu_mib())) for w in driver.workers])
        result["worker_mib"] = max(rss for rss, _ in peaks)
        result["gpu_mib"] = max(gpu for _, gpu in peaks)
        result["call_s"] = median_seconds(lambda i: ray.get(driver.workers[0].node.remote()), 50, 5)  # an empty actor call
        driver.shutdown()
        ray.shutdown()
    result["driver_mib"] = peak_rss_mib()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", required=True, help="a JSON row spec: workload, mode, and any of " + ", ".join(DEFAULTS))
    print(json.dumps(measure(json.loads(parser.parse_args().measure))))
