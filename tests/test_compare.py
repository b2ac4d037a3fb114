"""`compare`: one row per pipeline run, saved as CSV, with a learning-curve PNG."""

import pandas as pd
import pytest

from pipelines.compare import compare
from pipelines.config import ConfigError, load
from pipelines.pipeline import run


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


def test_compare_names_an_unknown_experiment(tracking, tmp_path):
    with pytest.raises(ConfigError, match="'nope'"):
        compare(["nope"], str(tmp_path / "out"), tracking)
