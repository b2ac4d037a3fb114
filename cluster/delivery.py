"""How workers read a prepared data set's splits without the driver holding them.

A split is handed to the workers as where to read it, never as its contents: its ``.npy`` path, which each worker
memory-maps (every worker of a machine then shares the pages of the rows tasks gather, through the page cache), or,
where some node cannot read the cache folder, a reference to the array in Ray's object store, put there by a task on
the driver's node and pulled once by each node that uses it. The driver's memory stays what it was, however large the
data set.
"""

import os
from pathlib import Path

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

Source = Path | ray.ObjectRef | np.ndarray | None  # what a worker is given for a split (``readable``)
DELIVERIES = ("auto", "shared_path", "object_store")


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
