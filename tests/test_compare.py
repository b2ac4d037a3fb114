"""`compare`: one row per pipeline run, with the published figure its config names, saved as CSV, with a learning-curve
PNG, and the lifelong runs' meta-tests on one figure."""

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from meta_core.models import flatten
from pipelines.compare import compare, meta_test_curves, meta_test_tables
from pipelines.config import ConfigError, load
from pipelines.pipeline import run
from pipelines.plots import log_meta_test
from tests.test_pipeline import child_runs, trained_params


def test_compare_tables_runs_of_different_algorithms(ray_local, tracking, tmp_path):
    fast = ["train.steps=4", "train.meta_batch=4", "eval.tasks=4", "experiment=cmp", "train.compile=false"]
    ids = [run(load("sinusoid", [*fast, f"algorithm.name={name}"]), tracking) for name in ("maml", "reptile")]
    table = compare(["cmp"], str(tmp_path / "out"), tracking)
    assert list(table.run_id) == ids
    assert list(table.algorithm) == ["maml", "reptile"]
    assert (table.metric == "eval_post_adapt_loss").all()
    assert table.value.notna().all() and table.ci95.notna().all() and (table.tasks_per_s > 0).all()
    assert (table.wall_s > 0).all()
    assert pd.read_csv(tmp_path / "out" / "comparison.csv").run_id.tolist() == ids
    assert (tmp_path / "out" / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_draws_the_lifelong_meta_tests_on_one_figure_with_a_shared_baseline_once(tracking, tmp_path):
    """A meta-learned run and the pre-trained baseline, whose from-scratch baselines are one network from one seed:
    both meta-tests read back as their evaluate runs logged them, and the shared baseline drawn once."""

    def figures(acc: list[float]) -> dict[str, list[float]]:
        return {"acc": acc, "acc_ci95": [0.02, 0.01], "train_acc": [a + 0.1 for a in acc], "train_acc_ci95": [0.03, 0.02]}

    def meta_test(acc: list[float]) -> pd.DataFrame:
        scratch = {f"scratch_{name}": values for name, values in figures([0.125, 0.05]).items()}
        return pd.DataFrame({"classes": [10, 50], "lr": [0.03, 0.01], **figures(acc), **scratch})

    mlflow.set_experiment("lifelong")
    logged = {"oml": meta_test([0.5, 0.2]), "oml_pretrained": meta_test([0.2, 0.07])}
    for name, table in logged.items():
        with mlflow.start_run(run_name=name, tags={"stage": "pipeline"}):
            with mlflow.start_run(nested=True) as evaluate:
                log_meta_test(table)
            mlflow.set_tag("evaluate_run_id", evaluate.info.run_id)
    mlflow.start_run(run_name="maml", tags={"stage": "pipeline"}).__exit__(None, None, None)  # no meta-test: not drawn

    compare(["lifelong"], str(tmp_path / "out"), tracking)
    assert (tmp_path / "out" / "classes_learned.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tables = meta_test_tables(mlflow.search_runs(filter_string="tags.stage = 'pipeline'", order_by=["attributes.start_time ASC"]))
    assert [label.split(" ")[0] for label in tables] == list(logged)
    for table, expected in zip(tables.values(), logged.values(), strict=True):
        pd.testing.assert_frame_equal(table[expected.columns], expected, check_dtype=False)
    curves = meta_test_curves(tables)
    oml, pretrained = tables
    assert list(curves) == [oml, f"{oml}, from scratch", pretrained]
    assert curves[f"{oml}, from scratch"]["acc"].tolist() == [0.125, 0.05]


def test_compare_names_an_unknown_experiment(tracking, tmp_path):
    with pytest.raises(ConfigError, match="'nope'"):
        compare(["nope"], str(tmp_path / "out"), tracking)


def test_published_figures_show_beside_ours_and_editing_them_reruns_nothing_while_the_best_validated_model_is_the_one_logged(
    ray_local, tracking, tmp_path, capsys
):
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"label": np.repeat(range(8), 4), "f1": rng.normal(size=32), "f2": rng.normal(size=32)})
    rows.to_csv(tmp_path / "features.csv", index=False)
    table_of_features = [f"data.source={tmp_path / 'features.csv'}", "data.name=table", "data.split=class", "data.features=[f1, f2]"]
    splits = ["data.test_size=2", "data.val_size=2", "task.ways=2", "task.shots=1", "task.queries=1"]
    evaluation = ["eval.tasks=4", "eval.val_tasks=4", "eval.steps=[1]"]
    diverging = ["train.steps=3", "train.checkpoint_every=1", "train.optimizer=sgd", "train.outer_lr=100", "train.select_on=val"]
    fast = [*table_of_features, *splits, *evaluation, *diverging, "train.meta_batch=2", "cluster.workers=1", "experiment=published"]
    paper = ["published.acc=0.9", "published.ci95=0.02", "published.source=Paper 2017, Table 1", "published.steps=1", "published.tasks=4"]
    first = run(load(None, [*fast, *paper]), tracking)

    stages = {r.data.tags["stage"]: r for r in child_runs(first)}
    train_run = stages["train"]
    assert train_run.data.metrics["best_step"] == 1 and "best_val_post_adapt_loss" in train_run.data.metrics
    assert [m.step for m in MlflowClient().get_metric_history(train_run.info.run_id, "val_post_adapt_loss")] == [1, 2, 3]
    state = torch.load(tmp_path / "checkpoints" / f"{train_run.info.run_id}.pt", weights_only=True)
    logged = flatten(trained_params(first))
    torch.testing.assert_close(logged, state["selection"]["flat"], rtol=0, atol=0)
    assert not torch.equal(logged, state["flat"])  # the last step's parameters were not the best
    for logged_in in (stages["evaluate"], mlflow.get_run(first)):
        assert {"published_acc": 0.9, "published_acc_ci95": 0.02}.items() <= logged_in.data.metrics.items()
        assert logged_in.data.tags["published_source"] == "Paper 2017, Table 1"

    capsys.readouterr()
    second = run(load(None, [*fast, *paper, "published.acc=0.95"]), tracking)
    assert child_runs(second) == [] and capsys.readouterr().out.count(": unchanged, reusing run") == 4
    assert mlflow.get_run(second).data.metrics["published_acc"] == 0.95

    table = compare(["published"], str(tmp_path / "out"), tracking)
    assert list(table.run_id) == [first, second] and list(table.published) == [0.9, 0.95]
    assert (table.metric == "eval_post_adapt_acc").all() and list(table.published_source) == ["Paper 2017, Table 1"] * 2
    assert list(table.vs_published) == list(table.value - table.published)
