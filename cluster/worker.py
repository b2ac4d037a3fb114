"""The Ray actor: one model, one task source, whole micro-batches of each meta-batch; and how a prepared data set's
splits reach it without the driver holding them.

A split is handed to the workers as where to read it, never as its contents: its ``.npy`` path, which each worker
memory-maps (every worker of a machine then shares the pages of the rows tasks gather, through the page cache), or,
where some node cannot read the cache folder, a reference to the array in Ray's object store, put there by a task on
the driver's node and pulled once by each node that uses it (``deliver``). The driver's memory stays what it was,
however large the data set.
"""

import ctypes
import os
from pathlib import Path

import numpy as np
import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.config import WorkerSetup
from meta_core.models import Layout
from meta_core.step import evaluate_tasks, micro_batch_gradient, micro_batch_query, vectorized
from meta_core.tasks import STREAMS

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters
INLINE_BYTES = 100 * 1024  # Ray sends call arguments and results up to this size inside the call (max_direct_call_object_size)


def to_wire(array: np.ndarray) -> np.ndarray | bytes:
    """An array as it crosses processes fastest: up to Ray's inline size as bytes, which Ray serializes
    faster than an array; above it as the array, which the object store holds zero-copy."""
    return array.tobytes() if array.nbytes <= INLINE_BYTES else array


def from_wire(data: np.ndarray | bytes) -> np.ndarray:
    """The float32 array that ``to_wire`` sent, flat if it came as bytes."""
    return np.frombuffer(data, np.float32) if isinstance(data, bytes) else data


def deterministic_kernels() -> None:
    """Torch's deterministic kernels where it has them (a warning where an operator has none), and on a GPU
    cuBLAS's fixed workspace, which it reads when CUDA starts: before this process uses CUDA."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def reuse_freed_memory() -> None:
    """Make glibc's malloc keep freed memory for the next step instead of handing it back to the OS.

    Torch takes CPU tensors straight from malloc, which by default serves blocks of a conv
    net's activation size with fresh ``mmap``s, and unmaps or trims them when they are
    freed: every step then page-faults its activations in again (benchmarks/ measures what
    that costs a 5-way Omniglot task). From a heap that is never trimmed, each
    step reuses the previous step's pages, as CUDA's caching allocator does. A no-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_MAX, 0)  # every block from the heap
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # and the heap's free top kept (mallopt takes an int)


Source = Path | ray.ObjectRef | np.ndarray | None  # what a worker is given for a split (``readable``)


@ray.remote(num_cpus=0)
def files_present(paths: list[str], sizes: list[int]) -> bool:
    """Whether this node sees each file at its path, with the size it has on the driver's node."""
    return all(os.path.isfile(p) and os.path.getsize(p) == size for p, size in zip(paths, sizes, strict=True))


@ray.remote(num_cpus=0)
def put_array(path: str) -> np.ndarray:
    """The ``.npy`` array at ``path``, as this task's result: in the object store, read through the page cache."""
    return np.asarray(np.load(path, mmap_mode="r"))


def on_this_node():
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def readable_everywhere(paths: list[Path]) -> bool:
    """Whether every alive node of the cluster reads ``paths`` (a shared file system, or a one-node cluster)."""
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    if len(nodes) <= 1:
        return True
    sizes = [p.stat().st_size for p in paths]
    probes = [
        files_present.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(list(map(str, paths)), sizes) for n in nodes
    ]
    return all(ray.get(probes))


def deliver(arrays: dict[str, Path], how: str) -> dict[str, Source]:
    """Each split as its workers will read it (``data.delivery``): ``shared_path``, its path; ``object_store``, a
    reference to it in the object store; ``auto``, the path where every node reads it, else the reference."""
    if how == "auto":
        how = "shared_path" if not ray.is_initialized() or readable_everywhere(list(arrays.values())) else "object_store"
    if how == "shared_path":
        return dict(arrays)
    return {name: put_array.options(scheduling_strategy=on_this_node()).remote(str(path)) for name, path in arrays.items()}


def readable(source: Source) -> np.ndarray | None:
    """A split as a worker reads it: memory-mapped from its path, read-only from the object store, or as given."""
    if isinstance(source, (str, os.PathLike)):
        return np.load(source, mmap_mode="r")
    if isinstance(source, ray.ObjectRef):
        return ray.get(source)
    return source


class MetaWorker:
    """Computes each micro-batch's summed meta-gradient for the micro-batches it is given.

    ``splits`` says where each split is (``deliver``): a file this
    worker memory-maps, or an array in the object store, read-only and zero-copy;
    either way shared by every worker on a node, and tasks only gather from
    them, so a worker reads the rows its tasks draw. A worker that
    dies is replaced by one built from the same arguments (``cluster.pool``),
    which can recompute any micro-batch.
    """

    def __init__(self, setup: WorkerSetup, splits: dict[str, Source], layout: Layout):
        reuse_freed_memory()
        deterministic_kernels()
        torch.set_num_threads(max(1, int(setup.num_cpus)))
        use_gpu = setup.num_gpus > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.algo = setup.learner.build()
        self.algo.model.to(self.device)
        self.sources = {name: setup.tasks(readable(source), split=name) for name, source in splits.items()}
        self.seed, self.layout, self.pre_adapt_every = setup.seed, layout, setup.pre_adapt_every
        self.vectorize, self.compiled = vectorized(setup.vectorize, setup.learner.model.name, use_gpu), setup.compile
        self.samples: dict = {}  # a meta-step's sampled episodes, for its later outer steps (meta_core.step.sampled)

    def params(self, flat: np.ndarray | bytes) -> torch.Tensor:
        return torch.tensor(from_wire(flat), device=self.device)  # a copy: object-store arrays are read-only

    def micro_batch_gradient(
        self, params: torch.Tensor, step: int, indices: list[int], behaviour: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Summed meta-gradient (float64, on the worker's device) and metrics of one micro-batch at ``params``; pre-adaptation metrics every few
        steps. Episodes sampled with ``behaviour`` are kept for the step's later outer steps."""
        pre_adapt = step % self.pre_adapt_every == 0
        train = self.sources["train"]
        return micro_batch_gradient(
            self.algo, train, params, self.layout, self.seed, step, indices, self.vectorize, self.compiled, pre_adapt, behaviour, self.samples
        )  # fmt: skip

    def micro_batch_gradients(
        self, flat: np.ndarray | bytes, step: int, micro_batches: list[list[int]], behaviour: np.ndarray | bytes | None = None
    ) -> tuple[np.ndarray | bytes, list[dict[str, float]]]:
        """Each micro-batch's summed meta-gradient, one float32 row each (summed in float64, then rounded once: half the
        bytes, and still the same bits wherever it is computed; ``to_wire``), and each one's summed metrics.
        ``behaviour``: the parameters the step's episodes are sampled with, where they are not ``flat``."""
        params = self.params(flat)
        kept = () if behaviour is None else (self.params(behaviour),)
        totals, sums = zip(*(self.micro_batch_gradient(params, step, indices, *kept) for indices in micro_batches), strict=True)
        return to_wire(torch.stack(totals).float().cpu().numpy()), list(sums)

    def query(
        self,
        flat: np.ndarray | bytes,
        step: int,
        micro_batches: list[list[int]],
        behaviour: np.ndarray | bytes,
        name: str,
        vector: np.ndarray | bytes,
    ) -> np.ndarray | bytes:
        """Each micro-batch's summed ``task_query`` at ``flat`` on the step's episodes sampled with ``behaviour``, one
        float32 row each, as ``micro_batch_gradients`` sends its gradients."""
        params, behaviour, vector = self.params(flat), self.params(behaviour), torch.tensor(from_wire(vector), dtype=torch.float64)
        train = self.sources["train"]
        rows = [
            micro_batch_query(self.algo, train, params, self.layout, self.seed, step, indices, name, vector, behaviour, self.samples)
            for indices in micro_batches
        ]
        return to_wire(torch.stack(rows).float().cpu().numpy())

    def evaluate_tasks(self, flat: np.ndarray | bytes, split: str, indices: list[int], steps: list[int]) -> dict[str, np.ndarray]:
        """Per-task metrics on tasks of ``split``, drawn from that split's stream; a split this worker was not given raises."""
        return evaluate_tasks(self.algo, self.sources[split], self.params(flat), self.layout, self.seed, STREAMS[split], indices, steps)

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()
