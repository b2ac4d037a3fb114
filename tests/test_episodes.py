"""Omniglot end to end from the prepared Parquet, then fixed one-shot episodes scored with the trained learner."""

import random
import zipfile

import mlflow
import pytest

import data
from data.sources import DataError
from pipelines.build import prepared
from pipelines.config import CONFIG_DIR, load
from pipelines.episodes import read_episode, score_episodes
from pipelines.pipeline import run

WAYS = 5


def episodes_folder(omniglot, root, runs: int = 2, ways: int = WAYS):
    """``runNN/training/classNN.png``, ``runNN/test/itemNN.png`` and ``class_labels.txt``, from the second zip's drawings."""
    rng = random.Random(0)
    with zipfile.ZipFile(omniglot.zips[1]) as archive:
        characters: dict[str, list[str]] = {}
        for name in sorted(n for n in archive.namelist() if n.endswith(".png")):
            characters.setdefault(name.rsplit("/", 1)[0], []).append(name)
        chosen = rng.sample(sorted(characters), runs * ways)
        for r in range(runs):
            run_dir, lines = root / f"run{r + 1:02d}", []
            (run_dir / "training").mkdir(parents=True)
            (run_dir / "test").mkdir()
            order = rng.sample(range(ways), ways)
            for c in range(ways):
                drawings = characters[chosen[r * ways + c]]
                (run_dir / "training" / f"class{c + 1:02d}.png").write_bytes(archive.read(drawings[0]))
                item = order[c] + 1
                (run_dir / "test" / f"item{item:02d}.png").write_bytes(archive.read(drawings[1]))
                lines.append(f"run{r + 1:02d}/test/item{item:02d}.png run{r + 1:02d}/training/class{c + 1:02d}.png")
            (run_dir / "class_labels.txt").write_text("\n".join(sorted(lines)) + "\n")
    return root


@pytest.mark.slow
def test_omniglot_5way_1shot_trains_from_parquet_on_held_out_alphabets_then_scores_episodes(ray_local, tracking, tmp_path, omniglot):
    config = load(
        str(CONFIG_DIR / "omniglot.yaml"),
        [
            *omniglot.overrides(),
            f"data.cache_dir={tmp_path / 'cache'}",
            "model.width=8",
            "train.steps=3",
            "train.meta_batch=4",
            "task.queries=2",
            "eval.tasks=4",
            "eval.steps=[1]",
            "cluster.workers=1",
            "train.compile=false",
        ],
    )
    parent = mlflow.get_run(run(config, tracking))
    assert parent.info.status == "FINISHED"
    manifest = data.manifest_of(prepared(config))
    assert set(manifest["splits"]["train"]["groups"]).isdisjoint(manifest["splits"]["test"]["groups"])
    assert manifest["splits"]["train"]["classes"] == 4 * (omniglot.characters - manifest["splits"]["test"]["classes"])  # rotated copies
    assert "eval_post_adapt_acc" in parent.data.metrics

    folder = episodes_folder(omniglot, tmp_path / "episodes")
    model_uri = f"runs:/{parent.data.tags['train_run_id']}"
    accuracy = score_episodes(model_uri, folder, tracking)
    assert set(accuracy) == {"run01", "run02", "overall"}
    for run_name in ("run01", "run02"):  # five test items per run: accuracy is a whole number of fifths
        assert 0 <= accuracy[run_name] <= 1 and accuracy[run_name] * WAYS == pytest.approx(round(accuracy[run_name] * WAYS))
    assert accuracy["overall"] == pytest.approx((accuracy["run01"] + accuracy["run02"]) / 2)
    logged = mlflow.search_runs([parent.info.experiment_id], "tags.stage = 'episodes'", output_format="list")
    assert len(logged) == 1 and logged[0].info.status == "FINISHED"
    assert logged[0].data.metrics["episodes_acc"] == pytest.approx(accuracy["overall"])
    history = mlflow.tracking.MlflowClient().get_metric_history(logged[0].info.run_id, "episode_acc")
    assert [m.value for m in history] == [accuracy["run01"], accuracy["run02"]]

    local = mlflow.artifacts.download_artifacts(run_id=parent.data.tags["train_run_id"], dst_path=str(tmp_path / "model"))
    assert score_episodes(local, folder, tracking) == accuracy  # a local folder holding params.pt and config.yaml

    with pytest.raises(data.DataError, match="run01/training: 3 classes, but the model was trained for 5 ways"):
        episodes_folder(omniglot, tmp_path / "three", runs=1, ways=3)
        score_episodes(model_uri, tmp_path / "three", tracking)


def test_an_episode_line_naming_an_image_outside_the_folder_is_refused_in_one_line(omniglot, tmp_path):
    root = episodes_folder(omniglot, tmp_path / "episodes", runs=1)
    outside = tmp_path / "secret.png"
    outside.write_bytes((root / "run01" / "training" / "class01.png").read_bytes())
    labels = root / "run01" / "class_labels.txt"
    first, *rest = labels.read_text().splitlines()
    labels.write_text("\n".join([f"../secret.png {first.split()[1]}", *rest]) + "\n")
    with pytest.raises(DataError, match=r"secret\.png: resolves to .*outside the source folder"):
        read_episode(root, "run01", 28)
    labels.write_text("\n".join([first, *rest]) + "\n")
    assert len(read_episode(root, "run01", 28).query_y) == WAYS  # the same folder, its own images only, reads
