"""The benchmarks' own measuring instruments measure what they claim."""

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks import call_latency, profile_share
from benchmarks.baseline import BaselineMAML, warm_up
from benchmarks.common import ROOT, omniglot_data
from benchmarks.memory import measure
from meta_core.models import init_params
from meta_core.registry import MODELS
from meta_core.step import draw
from meta_core.tasks import TRAIN, ClassificationTasks, SinusoidTasks
from pipelines.config import CONFIG_DIR, load


def test_memory_benchmark_sees_second_order_grow_with_inner_steps_and_checkpointing_keep_it_flat():
    mib = {(variant, steps): measure({"variant": variant, "inner_steps": steps})["mib"]
           for variant in ("second order", "first order", "checkpointed") for steps in (1, 10)}  # fmt: skip
    assert mib["second order", 10] > mib["second order", 1] + 20  # each inner step keeps its support-set graph
    assert mib["checkpointed", 10] < mib["second order", 10] - 20
    assert abs(mib["first order", 10] - mib["first order", 1]) < 5


def test_memory_benchmark_measures_colour_images_too():
    """The mini-ImageNet-shaped table's path (3 channels), at a small size: second order keeps each inner step."""
    colour = {"shape": [3, 32, 32], "width": 8}
    mib = {steps: measure({"variant": "second order", "inner_steps": steps, **colour})["mib"] for steps in (1, 5)}
    assert mib[5] > mib[1] > 0


def test_share_profile_sees_the_same_operators_and_calls_in_a_worker_as_in_process():
    """The two sides of benchmarks/profile_share.py must profile the same work, or their differences mean nothing."""
    script = "import json; from benchmarks.profile_share import measure; print(json.dumps(measure('sinusoid', steps=3, overrides=['train.compile=false'])))"
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True, timeout=300)
    here, in_worker, meta_batch = json.loads(out.stdout.strip().splitlines()[-1])
    assert meta_batch == 25
    calls = lambda side: {op: round(v[0]) for op, v in side["ops"].items()}  # noqa: E731
    assert calls(here) == calls(in_worker)
    assert calls(here)["aten::mse_loss"] > 0  # the MLP's loss, so the share's operators are there


def test_share_profile_times_and_counts_each_profiled_step_and_not_the_warm_up(monkeypatch):
    """``profiled_shares`` on a stand-in worker whose n-th call takes n ms of a fake clock and runs ``mm`` once per
    task: the wall is the median of the profiled steps' calls, and the counts are per profiled step."""
    clock, seen = [0.0], []

    class Worker:
        device = torch.device("cpu")

        def micro_batch_gradients(self, flat, step, micro_batches):
            seen.append(step)
            clock[0] += 1e-3 * step  # step n takes n ms
            for _ in (task for micro_batch in micro_batches for task in micro_batch):
                torch.mm(flat, flat)

    monkeypatch.setattr(profile_share, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    measured = profile_share.profiled_shares(Worker(), torch.ones(2, 2), [[0, 1], [2]], steps=4)
    assert seen == list(range(profile_share.WARMUP + 4))
    assert measured["wall_ms"] == pytest.approx(3.5)  # the median of steps 2, 3, 4 and 5, not of the warm-up's 0 and 1
    assert measured["ops"]["aten::mm"][0] == 3  # one call per task per step: the warm-up's calls are not profiled


def test_call_latency_counts_only_what_a_call_takes_beyond_its_work(monkeypatch):
    """On a fake clock: a call of 2 ms of work that takes 2.5 ms, but for a slow warm-up and one slow outlier, adds
    0.5 ms; the warm-up is not counted and the outlier does not move the median."""
    clock, extras = [0.0], iter([50e-3, 30e-3] + [0.5e-3] * 19)  # the warm-up, an outlier, then the rest

    def call(seconds):
        clock[0] += seconds + next(extras)

    monkeypatch.setattr(call_latency, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    assert call_latency.extra_ms(call, 2e-3, budget_s=0.04) == pytest.approx(0.5)  # 20 calls: 0.04 s of 2 ms each
    assert next(extras, None) is None  # the warm-up and exactly those 20


def baseline_and_tasks(network: str, compiled: bool) -> tuple[BaselineMAML, list]:
    """A second-order baseline on a small model, and four of its tasks."""
    if network == "mlp":
        model, source = MODELS["mlp"].make((1,), 1), SinusoidTasks(5, 5)
    else:
        images = np.random.default_rng(0).random((12, 6, 28, 28), dtype=np.float32)
        model, source = MODELS["conv4"].make((28, 28), 3, width=8), ClassificationTasks(images, 3, 1, 2)
    baseline = BaselineMAML(network, list(init_params(model, 0).values()), 0.1, 2, 1e-3, compiled=compiled)
    return baseline, draw(source, 0, TRAIN, 3, range(4))


def meta_gradient(baseline: BaselineMAML, tasks) -> np.ndarray:
    baseline.meta_gradient(tasks)
    return torch.cat([w.grad.reshape(-1) for w in baseline.weights]).numpy()


@pytest.mark.slow  # compiling the conv net's query pass takes about half a minute on 2 cores
@pytest.mark.parametrize("network", ["mlp", "conv4"])
def test_compiled_baseline_gives_the_eager_baselines_meta_gradient(network):
    eager = meta_gradient(*baseline_and_tasks(network, compiled=False))
    compiled, tasks = baseline_and_tasks(network, compiled=True)
    assert warm_up(compiled, tasks[0]) is None  # torch compiled it
    assert np.abs(eager).max() > 0
    np.testing.assert_allclose(meta_gradient(compiled, tasks), eager, rtol=1e-4, atol=1e-5)  # conv biases before BatchNorm: near-zero gradients


def test_a_baseline_torch_cannot_compile_is_reported_not_timed_eagerly(monkeypatch):
    def backend_without_the_op(graph, example_inputs):
        raise RuntimeError("no kernel for this op")

    compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **options: compile(fn, backend=backend_without_the_op))
    torch._dynamo.reset()  # no graph compiled by an earlier test may serve this one
    baseline, tasks = baseline_and_tasks("mlp", compiled=True)
    assert warm_up(baseline, tasks[0]).startswith("BackendCompilerFailed: ")


def test_omniglot_benchmarks_read_their_zips_from_omniglot_dir_else_the_official_small_sets(monkeypatch):
    monkeypatch.setenv("OMNIGLOT_DIR", "/data/omniglot")
    assert omniglot_data()[0] == "data.source=/data/omniglot"
    monkeypatch.delenv("OMNIGLOT_DIR")
    data = load(str(CONFIG_DIR / "omniglot.yaml"), omniglot_data()).data  # every override is a key the config knows
    assert data.source == ("images_background_small1", "images_background_small2")
    assert (data.split, data.test_size) == ("group", 0.25)
