"""What every benchmark here shares: the two workloads, median step times, fresh processes, the machine's peak."""

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SMALL_SETS = "[images_background_small1, images_background_small2]"  # official names: downloaded and verified by the data layer


def omniglot_data() -> list[str]:
    """The data overrides of the Omniglot workload every benchmark measures: the two small background sets (from the
    folder of zips in ``OMNIGLOT_DIR``, else by name), whole alphabets held out, a quarter of them. They are given
    explicitly, not taken from the shipped config, so that a change of its data protocol leaves the workload as it is."""
    return [f"data.source={os.environ.get('OMNIGLOT_DIR') or SMALL_SETS}", "data.split=group", "data.test_size=0.25"]


def workload(name: str, width: int = 64, workers: int = 1, device: str = "cpu", overrides=()) -> tuple[dict, dict]:
    """The config and task splits of ``sinusoid`` (MLP, meta-batch 25, 10-shot), ``omniglot``
    (5-way 1-shot, conv4, meta-batch 32, 15 queries, 1 inner step, second order) on ``omniglot_data``, or
    ``mini_imagenet`` (MAML's 5-way 1-shot protocol: 3x84x84, conv4 of 32 filters, meta-batch 4, 15 queries, 5 inner
    steps, second order) on ``mini_imagenet_standin``, with ``overrides`` (``key=value``) on top. On CUDA the workers share one card: ``num_gpus`` is 1/workers each."""
    from pipelines.config import CONFIG_DIR, load

    gpus = 1 / workers if device == "cuda" else 0
    overrides = [f"cluster.workers={workers}", f"cluster.num_gpus={gpus}", *overrides]
    if name == "sinusoid":
        return load(str(CONFIG_DIR / "sinusoid.yaml"), overrides), {"train": None, "test": None}
    import data
    from pipelines.build import prepared

    if name == "mini_imagenet":
        config = load(str(CONFIG_DIR / "papers" / "maml_mini_imagenet_1shot.yaml"), [f"data.source={mini_imagenet_standin()}", *overrides])
    else:
        config = load(str(CONFIG_DIR / "omniglot.yaml"), [*omniglot_data(), f"model.width={width}", *overrides])
    return config, data.load_splits(prepared(config))


def mini_imagenet_standin() -> Path:
    """mini-ImageNet's pickles with random images of its shape (84x84x3, 16 a class: one shot and 15 queries), made once
    under data/cache: the mini-ImageNet workload measures speed, for which the pixels do not matter."""
    from data.dataset import CACHE
    from tests.benchmark_data import mini_imagenet_pickles

    folder = CACHE / "benchmarks" / "mini-imagenet-standin"
    if not folder.exists():
        mini_imagenet_pickles(folder, per_class=16, side=84)
    return folder


def finished(device: str) -> None:
    """Wait for the queued CUDA kernels, so that a clock read afterwards times the work, not its launch."""
    if device == "cuda":
        torch.cuda.synchronize()


def median_seconds(step, steps: int, warmup: int, device: str = "cpu") -> float:
    """Median wall seconds of ``step(i)`` over ``steps`` calls after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + steps):
        started = time.perf_counter()
        step(i)
        finished(device)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def in_fresh_process(module: str, spec: dict, checkout: Path = ROOT) -> dict:
    """``python -m module --measure JSON`` in a new process (clean peak memory), in ``checkout`` (by default this
    one); its last stdout line as JSON."""
    out = subprocess.run([sys.executable, "-m", module, "--measure", json.dumps(spec)], cwd=checkout, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{module} {spec}: failed with\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def matmul_peak_gflops(threads: int, device: str = "cpu", repeats: int = 5) -> float:
    """float32 matmul GFLOP/s (``threads`` CPU threads, or the GPU): the attainable ceiling for these workloads."""
    size = 8192 if device == "cuda" else 1024
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    seconds = median_seconds(lambda _: a @ b, repeats, 1, device)
    torch.set_num_threads(previous)
    return 2 * size**3 / seconds / 1e9


def peak_gpu_mib() -> float:
    """Peak CUDA memory this process allocated (0 without a GPU)."""
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
