"""ANML's gating computed once a stream against at every inner step: a meta-training step's and a meta-test run's cost.

ANML's neuromodulatory network does not change in the inner loop, so ``ANML.stream_inputs`` gates the whole stream in
one batch before the pass. The other side is the same learner with its network run whole at every step (the base
class's ``stream_inputs`` and ``loss``): the same meta-gradient, the gating recomputed per image. Both in this
process on one thread, on random 28x28 images: a meta-training step is one trajectory's meta-gradient (one class's
20 images, a query of those 20 and 64 others, a head of 150 rows), a meta-test run learns 10 classes of 15 images at
one inner rate. Each figure is the CPU time of one call, the median of ``repeats`` calls after one warm-up; the two
sides take turns ``rounds`` times and each keeps its fastest median.

    .venv/bin/python -m benchmarks.anml_gating                              # the small sets' widths, 32 and 16
    .venv/bin/python -m benchmarks.anml_gating --width 256 --nm-width 112 --repeats 3 --rounds 2  # the paper's
"""

import argparse
import statistics
import time

import torch

from meta_core.algorithms import anml
from meta_core.algorithms.continual import StreamLearner
from meta_core.algorithms.gradient import GradientLearner
from meta_core.registry import ALGORITHMS, MODELS, Learner
from meta_core.tasks import Task, seeded_noise

GATED_ONCE = (anml.ANML.stream_inputs, anml.ANML.loss)
GATED_EVERY_STEP = (StreamLearner.stream_inputs, GradientLearner.loss)


def use(side: tuple) -> None:
    anml.ANML.stream_inputs, anml.ANML.loss = side


def cpu_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.process_time()
        fn()
        times.append(time.process_time() - started)
    return statistics.median(times)


def measure(width: int, nm_width: int, first_order: bool, repeats: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Per workload: (gated every step, gated once) CPU seconds."""
    options = {"classes": 150, "first_order": first_order, "test_lrs": [0.1]}
    algo = Learner(
        ALGORITHMS["anml"], MODELS["anml_net"], "classification", (28, 28), 1, 1, 0.1, options, {"width": width, "nm_width": nm_width}
    ).build()
    params = {k: v.requires_grad_() for k, v in algo.initial_params(0).items()}
    frozen = {k: v.detach() for k, v in params.items()}
    gen = torch.Generator().manual_seed(0)
    trajectory = Task(
        torch.rand(20, 28, 28, generator=gen),
        torch.full((20,), 3),
        torch.rand(84, 28, 28, generator=gen),
        torch.randint(0, 150, (84,), generator=gen),
    )
    stream = Task(
        torch.rand(150, 28, 28, generator=gen),
        torch.arange(10).repeat_interleave(15),
        torch.rand(50, 28, 28, generator=gen),
        torch.arange(10).repeat_interleave(5),
    )

    def step():
        with seeded_noise("cpu", 0, 1):
            algo.task_gradient(params, trajectory, False)

    def run():
        with seeded_noise("cpu", 0, 1):
            algo.evaluate_task(frozen, stream, [10])

    results = {}
    for name, fn in (("meta-training step", step), ("meta-test run, 10 classes", run)):
        best = {}
        for _ in range(rounds):
            for label, side in (("every step", GATED_EVERY_STEP), ("once", GATED_ONCE)):
                use(side)
                best[label] = min(best.get(label, float("inf")), cpu_seconds(fn, repeats))
        use(GATED_ONCE)
        results[name] = (best["every step"], best["once"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--nm-width", type=int, default=16)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = measure(args.width, args.nm_width, args.first_order, args.repeats, args.rounds)
    print(f"width {args.width}, nm {args.nm_width}, {'first' if args.first_order else 'second'} order, CPU ms of one thread")
    print(f"{'':>26}  {'gated every step':>16}  {'gated once':>10}  {'speed-up':>8}")
    for name, (every, once) in rows.items():
        print(f"{name:>26}  {every * 1e3:>16.0f}  {once * 1e3:>10.0f}  {every / once:>7.2f}x")


if __name__ == "__main__":
    main()
