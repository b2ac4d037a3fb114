"""Two simulated nodes: workers spread over both, training goes on when one node is removed, and where every node
reads the prepared splits."""

import time

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster
from ray.exceptions import ActorUnavailableError

from cluster import worker
from tests.cluster_helpers import STEPS, config, reference, train


@pytest.fixture(scope="module")
def two_nodes():
    """A head and one more node, two CPUs each; the session's local Ray is shut down first (it restarts on demand)."""
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def node_of(worker, wait_s: float = 60) -> str:
    """The node a worker runs on, waiting out a restart in progress."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return ray.get(worker.node.remote())
        except ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wait_until_dead(node_id: str, wait_s: float = 60) -> None:
    """Until Ray's control plane marks the node dead (and so restarts its actors elsewhere)."""
    deadline = time.monotonic() + wait_s
    while any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
        assert time.monotonic() < deadline, f"node {node_id} still alive {wait_s}s after its removal"
        time.sleep(0.2)


@pytest.mark.slow
def test_node_removed_mid_run_training_goes_on_with_the_nodes_left(two_nodes):
    cfg = config("cluster.workers=2", "train.micro_batch=2")  # micro-batches for both workers, so both nodes hold work
    ray.init(address=two_nodes.address, log_to_driver=False)
    side = two_nodes.add_node(num_cpus=2)
    two_nodes.wait_for_nodes()
    placed = {}

    def remove_side_node(step, driver):
        if step in (0, STEPS - 1):
            placed[step] = {node_of(w) for w in driver.workers}
        if step == STEPS // 2:
            two_nodes.remove_node(side, allow_graceful=False)
            wait_until_dead(side.node_id)  # the orphaned worker may answer calls that carry their data until then

    survived = train(cfg, between_steps=remove_side_node)
    assert placed[0] == {two_nodes.head_node.node_id, side.node_id}, "workers should spread over both nodes"
    assert placed[STEPS - 1] == {two_nodes.head_node.node_id}, "the lost worker should restart on the node left"
    np.testing.assert_allclose(survived, reference(cfg), rtol=1e-5, atol=1e-6)


def test_auto_delivery_probes_the_nodes_and_gives_a_split_some_node_cannot_read_through_the_object_store(two_nodes, tmp_path, monkeypatch):
    """The simulated nodes share this machine's files, so every probe finds the split and ``auto`` hands the workers
    its path; where a node could not read it (as the probe then says), the same split through the object store."""
    if not ray.is_initialized():
        ray.init(address=two_nodes.address, log_to_driver=False)
    if sum(node["Alive"] for node in ray.nodes()) < 2:
        two_nodes.add_node(num_cpus=2)
        two_nodes.wait_for_nodes()
    split = tmp_path / "train.npy"
    np.save(split, np.arange(12, dtype=np.float32).reshape(3, 4))
    assert worker.readable_everywhere([split])
    assert worker.deliver({"train": split}, "auto") == {"train": split}
    monkeypatch.setattr(worker, "readable_everywhere", lambda paths: False)
    (delivered,) = worker.deliver({"train": split}, "auto").values()
    assert isinstance(delivered, ray.ObjectRef)
    np.testing.assert_array_equal(worker.readable(delivered), np.load(split))
