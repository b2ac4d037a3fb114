"""The fast paths compute what the plain ones do: vmap vs loop, checkpointed vs plain inner loop, compiled vs eager,
and the benchmark's baseline vs meta_core; all-reduce's limits. (All-reduce against the driver path, bit for bit at any
steps per call: test_determinism.py; a group sent new parameters: test_resume.py.)"""

import resource
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from benchmarks.baseline import BaselineMAML
from cluster.worker import INLINE_BYTES, from_wire, to_wire
from meta_core.models import flatten, layout_of
from meta_core.registry import ALGORITHMS, MODELS
from meta_core.step import draw, micro_batch_gradient
from meta_core.tasks import TRAIN, ClassificationTasks, SinusoidTasks
from pipelines.build import build_learner
from pipelines.config import CONFIG_DIR, ConfigError, load
from tests.conftest import ROOT

IMAGES = np.random.default_rng(0).random((12, 6, 28, 28), dtype=np.float32)


def setup(network: str, algorithm: str = "maml", inner_steps: int = 1, **options):
    """An algorithm, its source of tasks and its initial flat parameters, for a small model."""
    if network == "mlp":
        model, kind, source = MODELS["mlp"].make((1,), 1), "regression", SinusoidTasks(5, 5)
    else:
        model, kind, source = MODELS["conv4"].make((28, 28), 3, width=8), "classification", ClassificationTasks(IMAGES, 3, 1, 2)
    algo = ALGORITHMS[algorithm].make(model, kind, inner_steps=inner_steps, inner_lr=0.1, **options)
    params = algo.initial_params(0)
    return algo, source, params


def meta_gradient(algo, source, params, vectorize: bool, tasks: int = 4, compiled: bool = False) -> np.ndarray:
    total, _ = micro_batch_gradient(algo, source, flatten(params), layout_of(params), 0, 3, range(tasks), vectorize, compiled)
    return total.numpy()


@pytest.mark.parametrize("network", ["mlp", "conv4"])
def test_vmap_and_loop_give_the_same_meta_gradient(network):
    algo, source, params = setup(network, inner_steps=2)
    batched, looped = meta_gradient(algo, source, params, True), meta_gradient(algo, source, params, False)
    assert np.abs(looped).max() > 0
    np.testing.assert_allclose(batched, looped, rtol=1e-4, atol=1e-5)  # conv biases before BatchNorm have near-zero gradients


@pytest.mark.slow  # compiling takes about 10 s for the MLP, about a minute for the conv net, on 2 cores
@pytest.mark.parametrize("network,algorithm,vectorize", [("mlp", "maml", True), ("mlp", "metasgd", True), ("conv4", "maml", False)])
def test_compiled_share_gives_the_same_meta_gradient(network, algorithm, vectorize):
    algo, source, params = setup(network, algorithm, inner_steps=2 if network == "mlp" else 1)  # the shipped configs' loops
    eager = meta_gradient(algo, source, params, vectorize)
    assert np.abs(eager).max() > 0
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="train.compile")  # it really compiled: no fallback to eager
        compiled = meta_gradient(algo, source, params, vectorize, compiled=True)
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-5)  # conv biases before BatchNorm have near-zero gradients


def test_a_meta_gradient_torch_cannot_compile_runs_eagerly_with_a_warning(monkeypatch):
    algo, source, params = setup("mlp", inner_steps=2)
    eager = meta_gradient(algo, source, params, True)

    def backend_without_the_op(graph, example_inputs):
        raise RuntimeError("no kernel for this op")

    compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **options: compile(fn, backend=backend_without_the_op))
    with pytest.warns(UserWarning, match="train.compile: torch could not compile .* runs eagerly .*BackendCompilerFailed"):
        np.testing.assert_array_equal(meta_gradient(algo, source, params, True, compiled=True), eager)


def test_workers_reuse_freed_memory_instead_of_faulting_it_in_again():
    """Blocks above glibc's largest mmap threshold (32 MiB) are mapped and unmapped by default, so every step
    faults its activations in again; a worker's heap keeps them once it has grown to a step's needs."""

    def faults(reuse: bool) -> int:
        script = f"""
import resource, torch
from cluster.worker import reuse_freed_memory
if {reuse}:
    reuse_freed_memory()
def step():
    activations = [torch.ones(12 * 2**20) for _ in range(2)]  # 2 x 48 MiB, freed together
for _ in range(16):  # the heap grows for a few steps until freed blocks fit the next step's
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
        out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    pages = 8 * 96 * 2**20 // resource.getpagesize()
    assert faults(False) > pages / 2
    assert faults(True) < pages / 100


def test_compile_and_checkpoint_inner_are_refused_together():
    with pytest.raises(ConfigError, match="train.compile"):
        load(str(CONFIG_DIR / "sinusoid.yaml"), ["train.compile=true", "algorithm.checkpoint_inner=true"])


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "metasgd", "anil"])
def test_checkpointed_inner_loop_equals_the_plain_one(algorithm):
    _, source, params = setup("conv4", algorithm, inner_steps=3)
    plain = meta_gradient(setup("conv4", algorithm, inner_steps=3)[0], source, params, False)
    checkpointed_algo = setup("conv4", algorithm, inner_steps=3, checkpoint_inner=True)[0]
    checkpointed = meta_gradient(checkpointed_algo, source, params, True)  # vectorize is ignored: runs task by task
    assert np.abs(plain).max() > 0
    np.testing.assert_allclose(checkpointed, plain, rtol=1e-5, atol=1e-7)


def test_checkpoint_inner_is_read_from_the_config():
    config = load(str(CONFIG_DIR / "sinusoid.yaml"), ["algorithm.checkpoint_inner=true", "train.compile=false"])
    assert build_learner(config).checkpoint_inner
    assert not build_learner(load(str(CONFIG_DIR / "sinusoid.yaml"), [])).checkpoint_inner


@pytest.mark.parametrize("network,first_order", [("mlp", False), ("conv4", False), ("conv4", True)])
def test_baseline_meta_gradient_equals_meta_core(network, first_order):
    algo, source, params = setup(network, "fomaml" if first_order else "maml", inner_steps=2)
    ours = meta_gradient(algo, source, params, False) / 4
    baseline = BaselineMAML(network, list(params.values()), 0.1, 2, 1e-3, first_order)
    baseline.meta_gradient(draw(source, 0, TRAIN, 3, range(4)))
    theirs = torch.cat([w.grad.reshape(-1) for w in baseline.weights]).numpy()
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)  # conv biases before BatchNorm have near-zero gradients


def test_allreduce_needs_a_task_per_worker():
    with pytest.raises(ConfigError, match=r"'cluster.aggregation'.*train.meta_batch \(6\) >= cluster.workers \(8\)"):
        load(str(CONFIG_DIR / "sinusoid.yaml"), ["train.meta_batch=6", "cluster.workers=8", "cluster.aggregation=allreduce"])


def test_allreduce_on_shared_gpus_is_refused_before_nccl_would_fail():
    shared = ["cluster.aggregation=allreduce", "cluster.num_gpus=0.5"]
    with pytest.raises(ConfigError, match=r"'cluster.num_gpus'.*whole GPU per worker.*got 0.5"):
        load(str(CONFIG_DIR / "sinusoid.yaml"), shared)
    load(str(CONFIG_DIR / "sinusoid.yaml"), ["cluster.aggregation=driver", "cluster.num_gpus=0.5"])  # the driver path shares cards
    load(str(CONFIG_DIR / "sinusoid.yaml"), ["cluster.aggregation=allreduce", "cluster.num_gpus=1"])


def test_steps_per_call_above_one_is_refused_where_the_driver_takes_the_outer_step():
    with pytest.raises(ConfigError, match=r"'cluster.steps_per_call'.*needs cluster.aggregation: allreduce.*got 5"):
        load(str(CONFIG_DIR / "sinusoid.yaml"), ["cluster.steps_per_call=5"])
    load(str(CONFIG_DIR / "sinusoid.yaml"), ["cluster.steps_per_call=5", "cluster.aggregation=allreduce"])


def test_arrays_cross_processes_as_bytes_up_to_rays_inline_size_and_arrive_unchanged():
    for size in (1761, INLINE_BYTES // 4, INLINE_BYTES // 4 + 1):
        array = np.random.default_rng(size).standard_normal(size).astype(np.float32)
        wire = to_wire(array)
        assert isinstance(wire, bytes) == (size * 4 <= INLINE_BYTES)
        np.testing.assert_array_equal(from_wire(wire), array)
