"""Peak memory of one Omniglot-shaped task's meta-gradient against inner steps:
second-order MAML, first-order MAML, and second-order MAML with a checkpointed inner loop.

Each figure is measured in a fresh process: the growth of the peak resident set
(CPU) or of peak allocated memory (CUDA) during one ``task_grad`` of a 5-way
1-shot, 15-query task on conv4.

    .venv/bin/python -m benchmarks.memory --measure '{"variant": "checkpointed", "inner_steps": 10}'
"""

import argparse
import json
import time

import numpy as np
import torch

from benchmarks.common import peak_rss_mib

VARIANTS = {"second order": ("maml", {}), "first order": ("fomaml", {}), "checkpointed": ("maml", {"checkpoint_inner": True})}
DEFAULTS = {"width": 64, "device": "cpu"}


def measure(spec: dict) -> dict:
    from meta_core.algorithms import build_algorithm
    from meta_core.models import build_model, init_params
    from meta_core.tasks import ClassificationTasks, task_rng

    spec = {**DEFAULTS, **spec}
    device, cuda = spec["device"], spec["device"] == "cuda"
    torch.set_num_threads(1)
    images = np.random.default_rng(0).random((10, 20, 28, 28), dtype=np.float32)
    task = ClassificationTasks(images, ways=5, shots=1, queries=15).sample(task_rng(0, 0, 0, 0)).to(device)
    model = build_model("conv4", ways=5, width=spec["width"]).to(device)
    name, options = VARIANTS[spec["variant"]]
    algo = build_algorithm(name, model, "classification", inner_steps=spec["inner_steps"], inner_lr=0.4, **options)
    params = {k: v.to(device) for k, v in algo.init(init_params(model, 0)).items()}
    algo.loss(params, task.support_x, task.support_y)  # load kernels before the baseline
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**20 if cuda else peak_rss_mib()
    started = time.perf_counter()
    algo.task_grad(params, task)
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
    return {"mib": peak - base, "s": time.perf_counter() - started}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", required=True, help="a JSON spec: variant, inner_steps, and any of " + ", ".join(DEFAULTS))
    print(json.dumps(measure(json.loads(parser.parse_args().measure))))
