"""A trained Omniglot learner from the registry, by alias: in process and behind `mlflow models serve`."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

import data
from meta_core.tasks import ClassificationTasks
from pipelines.artifacts import Trained
from pipelines.build import prepared
from pipelines.config import load
from pipelines.pipeline import run
from pipelines.serving import request
from pipelines.stages.register import register_stage
from tests.conftest import start_local_ray

NAME = "omniglot-served"
CHAMPION = f"models:/{NAME}@champion"
TRAIN = [
    "data.rotations=false",
    "model.width=16",
    "train.steps=100",
    "train.meta_batch=8",
    "train.outer_lr=0.003",
    "task.queries=5",
    "eval.tasks=20",
    "eval.steps=[1]",
    "register.metric=eval_post_adapt_acc",
    "train.compile=false",
]


@pytest.fixture(scope="module")
def champion(ray_session, tmp_path_factory, omniglot):
    """Train a small conv4 with MAML, register it; yields the store's URI, its folder and held-out 5-way 1-shot tasks."""
    start_local_ray(ray_session)  # as ray_local does, for a module-wide fixture
    folder = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        config = load("omniglot", [*omniglot.overrides(), *TRAIN, f"data.cache_dir={folder / 'cache'}", f"register.model_name={NAME}"])
        parent = mlflow.get_run(run(config, uri))
        with mlflow.start_run(run_id=parent.info.run_id), mlflow.start_run(run_name="register", nested=True):
            register_stage(config, Trained.download(parent.data.tags["train_run_id"]), parent.data.metrics)
        held_out = ClassificationTasks(data.load_splits(prepared(config))["test"], ways=5, shots=1, queries=5)
        tasks = [held_out.sample(np.random.default_rng(seed)) for seed in range(20)]
        yield uri, folder, tasks


def task_request(task):
    return request(task.support_x.numpy(), task.support_y.numpy(), task.query_x.numpy())


@pytest.mark.slow
def test_champion_adapts_to_held_out_alphabets_far_above_chance(champion):
    _, _, tasks = champion
    model = mlflow.pyfunc.load_model(CHAMPION)
    hits = [model.predict(task_request(t))["prediction"].to_numpy() == t.query_y.numpy() for t in tasks]
    assert np.mean(hits) > 0.5, np.mean(hits)  # chance is 0.2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(champion):
    """`mlflow models serve` on the champion, bound to loopback; stopped (with its workers) after the test."""
    uri, folder, _ = champion
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", CHAMPION, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    log = open(folder / "serve.log", "w")
    # The server runs `uvicorn` from PATH: the one installed next to this Python.
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"server exited: {(folder / 'serve.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "server not up after 120 s"
            try:
                if urllib.request.urlopen(f"{url}/ping", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def post(url: str, body: dict) -> tuple[int, dict]:
    call = urllib.request.Request(f"{url}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(call, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_served_champion_answers_a_5_way_1_shot_request(champion, server):
    _, _, tasks = champion
    task = tasks[0]
    frame = task_request(task)
    status, answer = post(server, {"dataframe_split": frame.to_dict(orient="split", index=False), "params": {"adapt_steps": 1}})
    assert status == 200, answer
    rows = answer["predictions"]
    assert len(rows) == len(task.query_y)
    expected = mlflow.pyfunc.load_model(CHAMPION).predict(frame, params={"adapt_steps": 1})
    assert [r["prediction"] for r in rows] == expected["prediction"].tolist()
    probabilities = np.array([r["probabilities"] for r in rows])
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probabilities, np.stack(expected["probabilities"]), atol=1e-6)
    status, answer = post(server, {"dataframe_split": frame.assign(x=[[0.5]] * len(frame)).to_dict(orient="split", index=False)})
    assert status == 400 and "x: expected 784 values" in answer["message"]
