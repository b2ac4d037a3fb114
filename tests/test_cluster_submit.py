"""`python -m pipelines submit` against a real two-node Ray cluster on loopback, with token auth on."""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from tests.conftest import ROOT

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_ports() -> list[str]:
    """Every port a node would otherwise take at a fixed default, so two nodes share one machine."""
    names = ["dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port"]
    return [f"--{name}={free_port()}" for name in names]


@pytest.fixture
def cluster(tmp_path):
    """A head (1 CPU, dashboard on 127.0.0.1) and a node offering the custom resource ``side`` (1 CPU)."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    token = secrets.token_hex(32)
    (home / ".ray" / "auth_token").write_text(token)
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    gcs, dashboard = free_port(), free_port()
    started = []

    def start(*args: str, name: str) -> None:
        temp = Path(os.path.realpath("/tmp")) / f"rt{secrets.token_hex(3)}"  # short: Ray's socket paths have a length limit
        log = open(tmp_path / f"{name}.log", "w")
        started.append(
            (
                subprocess.Popen(
                    [str(VENV_BIN / "ray"), "start", "--block", "--num-cpus=1", f"--temp-dir={temp}", *node_ports(), *args],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                ),
                temp,
            )
        )

    try:
        start(
            "--head",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={free_port()}",
            name="head",
        )
        url = f"http://127.0.0.1:{dashboard}"
        version = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
        wait_for(lambda: urllib.request.urlopen(version, timeout=2), 90)
        start(f"--address=127.0.0.1:{gcs}", '--resources={"side": 1}', name="side")
        wait_for(lambda: node_started(tmp_path / "side.log"), 90)  # a job submitted before the node joins sees one node
        yield url, env
    finally:
        for process, _ in started:  # only what this test started: each node's own process group
            with_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10  # for all of them together; what is left then is killed with its group
        for process, temp in started:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            with_group(process.pid, signal.SIGKILL)
            subprocess.run(["rm", "-rf", str(temp)])


def with_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def node_started(log: Path) -> None:
    """Raise until ``ray start`` has logged that its node runs."""
    if "Ray runtime started." not in log.read_text():
        raise OSError(f"{log.name}: the node has not started yet")


def wait_for(probe, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return probe()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.mark.slow
def test_submitted_job_runs_on_both_nodes_and_is_tracked(cluster, tmp_path):
    url, env = cluster
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines",
            "submit",
            "sinusoid",
            "--tracking-uri",
            store,
            "--address",
            url,
            "--set",
            "train.steps=4",
            "--set",
            "train.meta_batch=4",
            "--set",
            "eval.tasks=4",
            "--set",
            "cluster.workers=2",
            "--set",
            "experiment=submitted",
        ],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "SUCCEEDED" in out.stdout
    assert "evaluation (mean +- 95% interval)" in out.stdout  # the job's own output, streamed back

    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(experiment_names=["submitted"], output_format="list")
    assert runs and all(r.info.status == "FINISHED" for r in runs)

    actors = subprocess.run(
        [str(VENV_BIN / "ray"), "list", "actors", "--address", url, "--filter", "class_name=MetaWorker", "--detail", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    nodes = subprocess.run(
        [str(VENV_BIN / "ray"), "list", "nodes", "--address", url, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert len({a["node_id"] for a in json.loads(actors.stdout)}) == 2 == len(json.loads(nodes.stdout))
