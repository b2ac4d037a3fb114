"""The register stage: a servable few-shot model in the registry, and an alias that only moves to a better version."""

import dataclasses

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from meta_core.models import forward
from meta_core.tasks import SinusoidTasks
from pipelines.artifacts import Trained, load_trained
from pipelines.config import Config, ConfigError, load
from pipelines.pipeline import run
from pipelines.serving import request
from pipelines.stages.register import register_stage
from tests.conftest import start_local_ray

FAST = ["train.steps=20", "train.meta_batch=5", "eval.tasks=10", "algorithm.inner_steps=2", "train.compile=false"]


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    """One short sinusoid pipeline run: its config, what it trained and its evaluation metrics, in a module-wide store."""
    start_local_ray(ray_session)  # as ray_local does, for a module-wide fixture
    folder = tmp_path_factory.mktemp("register")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        config = load("sinusoid", FAST)
        parent = mlflow.get_run(run(config, f"sqlite:///{folder / 'mlflow.db'}"))
        metrics = {k: v for k, v in parent.data.metrics.items() if k.startswith("eval_")}
        yield config, Trained.download(parent.data.tags["train_run_id"]), metrics


def register(config: Config, trained: Trained, metrics: dict, model_name: str, **overrides) -> dict:
    """register_stage inside its own run, as the pipeline calls it, under ``model_name`` (``overrides`` unchecked:
    a sinusoid config may stand in for a classifier's)."""
    config = dataclasses.replace(config, register=dataclasses.replace(config.register, model_name=model_name, **overrides))
    with mlflow.start_run(run_name="register"):
        return register_stage(config, trained, metrics)


def sinusoid_request(seed: int):
    task = SinusoidTasks(shots=10, queries=25).sample(np.random.default_rng(seed))
    return task, request(task.support_x.numpy(), task.support_y.numpy().ravel(), task.query_x.numpy())


def test_champion_loads_from_the_registry_and_adapts_like_the_learner(trained):
    config, learned, metrics = trained
    out = register(config, learned, metrics, "sine-champion")
    assert out.items() >= {"model_name": "sine-champion", "version": 1, "alias": "champion", "champion_version": 1}.items()
    model = mlflow.pyfunc.load_model("models:/sine-champion@champion")
    assert model.metadata.signature.params.to_dict()[0]["default"] == 2  # the trained inner steps
    _, algo, params = load_trained(learned.run_id)
    task, frame = sinusoid_request(seed=7)
    predictions = {}
    for steps in (0, 2, 5):
        expected = forward(algo.model, algo.adapt(params, task, steps), task.query_x).detach()
        predictions[steps] = model.predict(frame, params={"adapt_steps": steps})["prediction"].to_numpy()
        np.testing.assert_allclose(predictions[steps], expected.squeeze(-1).numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(predictions[0], predictions[2])
    np.testing.assert_array_equal(model.predict(frame)["prediction"].to_numpy(), predictions[2])


def test_alias_moves_only_to_a_version_that_beats_the_champion(trained):
    config, learned, metrics = trained
    client = MlflowClient()
    verdicts = []
    for loss in (1.0, 2.0, 1.0, 0.5):
        out = register(config, learned, {**metrics, "eval_post_adapt_loss": loss}, "sine-race")
        verdicts.append((out["version"], out["champion_version"]))
    assert verdicts == [(1, 1), (2, 1), (3, 1), (4, 4)]
    assert client.get_model_version_by_alias("sine-race", "champion").version == 4
    assert client.get_model_version("sine-race", "2").tags["eval_post_adapt_loss"] == "2.0"

    accuracy = {**metrics, "eval_steps5_acc": 0.6}  # an accuracy: higher is better
    verdicts = [
        register(config, learned, {**accuracy, "eval_steps5_acc": acc}, "acc-race", metric="eval_steps5_acc")["champion_version"]
        for acc in (0.6, 0.5, 0.7)
    ]
    assert verdicts == [1, 1, 3]


def test_a_nan_figure_is_never_crowned_and_a_nan_champion_is_beaten_by_any_finite_one(trained):
    config, learned, metrics = trained
    verdicts = [register(config, learned, {**metrics, "eval_post_adapt_loss": loss}, "sine-nan") for loss in (np.nan, 2.0, np.nan)]
    assert [(out["version"], out["champion_version"]) for out in verdicts] == [(1, None), (2, 2), (3, 2)]
    MlflowClient().set_model_version_tag("sine-nan", "2", "eval_post_adapt_loss", "nan")  # a champion crowned before NaN was refused
    assert register(config, learned, {**metrics, "eval_post_adapt_loss": 5.0}, "sine-nan")["champion_version"] == 4


def test_bad_requests_are_refused_with_the_field_named(trained):
    config, learned, metrics = trained
    register(config, learned, metrics, "sine-strict")
    model = mlflow.pyfunc.load_model("models:/sine-strict@champion")
    _, frame = sinusoid_request(seed=1)
    wide = frame.assign(x=[[0.0, 1.0]] * len(frame))
    no_queries = frame[frame["set"] == "support"]
    unlabelled = frame.assign(y=np.nan)
    cases = [(wide, "x: expected 1 values"), (no_queries, "at least one 'support' row and one 'query' row"), (unlabelled, "y: every support row")]
    for bad, message in cases:
        with pytest.raises(MlflowException, match=message) as error:
            model.predict(bad)
        assert "\n" not in error.value.message
    with pytest.raises(MlflowException, match="adapt_steps"):
        model.predict(frame, params={"adapt_steps": -1})


def test_register_settings_are_checked_before_anything_runs(trained):
    with pytest.raises(ConfigError, match="register.metric"):
        load("sinusoid", ["register.metric=eval_post_adapt_acc"])
    with pytest.raises(ConfigError, match="register.alias"):
        load("sinusoid", ["register.alias=latest"])
    config, learned, metrics = trained
    with pytest.raises(ValueError, match="register.metric: eval_steps7_loss"):
        register(config, learned, metrics, "sine-unscored", metric="eval_steps7_loss")
    assert not MlflowClient().search_registered_models("name = 'sine-unscored'")
