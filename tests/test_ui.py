"""What the MLflow UI shows: runs of different algorithms side by side on the same columns, and the plots."""

import contextlib
import io
import re

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pipelines.config import load
from pipelines.pipeline import run
from tests.conftest import start_local_ray

FAST = ["train.steps=8", "train.meta_batch=4", "eval.tasks=8", "task.shots=5", "train.compile=false"]


@pytest.fixture(scope="module")
def two_runs(ray_session, tmp_path_factory):
    """MAML and Reptile on the same task in one store; yields their parent runs and what the pipeline printed."""
    start_local_ray(ray_session)  # as ray_local does, for a module-wide fixture
    folder = tmp_path_factory.mktemp("ui")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.chdir(folder)
        ids = [run(load("sinusoid", [*FAST, f"algorithm.name={name}"]), f"sqlite:///{folder / 'mlflow.db'}") for name in ("maml", "reptile")]
        yield [mlflow.get_run(i) for i in ids], printed.getvalue()


def tracked_metrics(run) -> set[str]:
    """A run's metrics but MLflow's system ones, which are sampled every 10 s: a short run may have none."""
    return {name for name in run.data.metrics if not name.startswith("system/")}


def test_runs_of_two_algorithms_are_comparable_on_the_same_columns(two_runs):
    runs, _ = two_runs
    found = mlflow.search_runs([runs[0].info.experiment_id], "tags.stage = 'pipeline' and tags.dataset = 'sinusoid'")
    assert sorted(found["tags.algorithm"]) == ["maml", "reptile"]
    assert sorted(found["tags.mlflow.runName"]) == ["maml-sinusoid-5shot", "reptile-sinusoid-5shot"]
    maml, reptile = runs
    assert maml.data.params.keys() == reptile.data.params.keys()
    assert {"algorithm.name", "task.shots", "train.steps", "register.metric"} <= maml.data.params.keys()
    assert tracked_metrics(maml) == tracked_metrics(reptile)
    assert {"eval_post_adapt_loss", "eval_post_adapt_loss_ci95"} <= maml.data.metrics.keys()
    assert maml.data.tags.keys() == reptile.data.tags.keys()
    for tag in ("algorithm", "dataset", "ways", "shots", "workers", "code_version"):
        assert maml.data.tags[tag], tag
    for column in ("metrics.eval_post_adapt_loss", "params.algorithm.inner_lr", "tags.code_version"):
        assert found[column].notna().all(), column
    history = MlflowClient().get_metric_history(maml.data.tags["train_run_id"], "meta_loss")
    assert sorted(m.step for m in history) == list(range(8))


def test_end_of_run_prints_how_to_open_the_runs_page(two_runs):
    runs, printed = two_runs
    store = mlflow.get_tracking_uri()
    assert f"mlflow ui --backend-store-uri {store} --host 127.0.0.1" in printed
    assert re.search(rf"http://127\.0\.0\.1:\d+/#/experiments/{runs[0].info.experiment_id}/runs", printed)


def test_the_evaluate_stage_logs_the_learning_curve_and_the_adaptation_plot(two_runs, tmp_path):
    for parent in two_runs[0]:
        evaluate_run = parent.data.tags["evaluate_run_id"]
        logged = {a.path for a in MlflowClient().list_artifacts(evaluate_run)}
        assert {"learning_curve.png", "adaptation_steps.png", "evaluation.json"} <= logged
        for name in ("learning_curve.png", "adaptation_steps.png"):
            path = mlflow.artifacts.download_artifacts(run_id=evaluate_run, artifact_path=name, dst_path=str(tmp_path / evaluate_run))
            with Image.open(path) as image:
                assert image.format == "PNG" and min(image.size) > 100
                assert len(image.convert("L").getcolors(maxcolors=1 << 16)) > 20  # drawn on: axes, curves and labels
