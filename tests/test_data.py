"""The prepare stage: sources in, one cached Parquet dataset with disjoint splits out, and every bad input refused."""

import functools
import hashlib
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

import data
from data import sources
from data.sources import OMNIGLOT_CHECKSUMS, checksum
from meta_core.models import forward, init_params
from pipelines.build import build_learner, prepared, task_source
from pipelines.config import CONFIG_DIR, load
from pipelines.stages.prepare import prepare_stage
from tests.conftest import ROOT
from tests.omniglot_data import small_set_overrides


def config(tmp_path: Path, source, *overrides: str) -> dict:
    return load(
        str(CONFIG_DIR / "omniglot.yaml"), [*small_set_overrides(source), "data.rotations=false", f"data.cache_dir={tmp_path / 'cache'}", *overrides]
    )


def omniglot_folder(omniglot, root: Path, alphabets: int = 4, characters: int = 3, drawings: int = 6) -> Path:
    """A small copy of part of the first zip, in Omniglot's folder layout."""
    with zipfile.ZipFile(omniglot.zips[0]) as archive:
        names = [n for n in archive.namelist() if n.endswith(".png")]
        keep_alphabets = sorted({n.split("/")[1] for n in names})[:alphabets]
        for name in names:
            _, alphabet, character, file = name.split("/")
            index = int(character.removeprefix("character"))
            if alphabet in keep_alphabets and index <= characters and int(file[-6:-4]) <= drawings:
                target = root / alphabet / character / file
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(name))
    return root


def png(value: int = 0, size: int = 32) -> bytes:
    out = io.BytesIO()
    Image.new("L", (size, size), value).save(out, format="PNG")
    return out.getvalue()


def split_labels(folder: Path) -> dict[str, set[str]]:
    return {
        split: set(pq.read_table(folder / f"{split}.parquet", columns=["label"]).column("label").to_pylist())
        for split in data.split_names(data.manifest_of(folder))
    }


def built(tmp_path: Path) -> list[Path]:
    cache = tmp_path / "cache"
    return [p for p in cache.iterdir() if p.name != "downloads"] if cache.exists() else []


def test_two_overlapping_zips_keep_shared_characters_once_and_hold_out_whole_alphabets(tmp_path, omniglot):
    cfg = config(tmp_path, omniglot.folder)
    folder = prepared(cfg)
    manifest = data.manifest_of(folder)
    assert [s["sha256"] for s in manifest["sources"]] == [checksum(z) for z in omniglot.zips]
    if omniglot.official:
        assert [f"sha256:{s['sha256']}" for s in manifest["sources"]] == [OMNIGLOT_CHECKSUMS[z.stem] for z in omniglot.zips]
    splits = data.load_splits(folder)
    assert set(splits) == {"train", "test"}  # no validation split unless data.val_size asks for one
    assert splits["train"].shape[0] + splits["test"].shape[0] == omniglot.characters  # the shared alphabets counted once
    assert splits["train"].shape[1:] == (omniglot.drawings, 28, 28) and splits["train"].dtype == np.uint8 and splits["train"].flags.c_contiguous
    assert set(manifest["splits"]["train"]["groups"]).isdisjoint(manifest["splits"]["test"]["groups"])
    assert len(manifest["splits"]["test"]["groups"]) == round(omniglot.alphabets * 0.25)
    images = splits["test"]
    assert images.max() >= 250 and np.median(images) == 0  # strokes 255 on a 0 background
    assert prepared(cfg) == folder and len(built(tmp_path)) == 1  # cached: found again, not rebuilt


def test_splits_are_deterministic_from_the_seed_and_no_class_is_in_two_splits(tmp_path, omniglot):
    source = omniglot_folder(omniglot, tmp_path / "omniglot")
    labels = {}
    for seed in (0, 0, 1):
        for by in ("group", "class"):
            cfg = config(tmp_path, source, f"seed={seed}", f"data.split={by}", "task.ways=2", "task.queries=2")
            found = split_labels(prepared(cfg))
            assert found["train"].isdisjoint(found["test"])
            assert len(found["train"] | found["test"]) == 12
            if by == "group":
                assert {label.split("/")[0] for label in found["train"]}.isdisjoint({label.split("/")[0] for label in found["test"]})
            assert labels.setdefault((seed, by), found) == found
    assert labels[(0, "class")] != labels[(1, "class")]


def test_split_by_source_tests_on_the_classes_only_the_last_source_holds(tmp_path, omniglot):
    def alphabets(zip_path: Path) -> set[str]:
        with zipfile.ZipFile(zip_path) as archive:
            return {name.split("/")[1] for name in archive.namelist() if name.endswith(".png")}

    first, last = (alphabets(z) for z in omniglot.zips)
    zips = f"data.source=[{omniglot.zips[0]}, {omniglot.zips[1]}]"
    found = split_labels(prepared(config(tmp_path, None, zips, "data.split=source", "task.ways=2", "task.queries=2")))
    assert {label.split("/")[0] for label in found["test"]} == last - first  # shared alphabets stay with the first source
    assert {label.split("/")[0] for label in found["train"]} == first
    with pytest.raises(data.DataError, match=r"data.split: 'source' holds out the classes of the last .* \(got 1\)"):
        prepared(config(tmp_path, None, f"data.source={omniglot.zips[0]}", "data.split=source", "task.ways=2", "task.queries=2"))


def test_rotations_add_three_turned_copies_of_train_classes_only(tmp_path, omniglot):
    source = omniglot_folder(omniglot, tmp_path / "omniglot")
    plain = data.load_splits(prepared(config(tmp_path, source, "task.ways=2", "task.queries=2")))
    turned = data.load_splits(prepared(config(tmp_path, source, "task.ways=2", "task.queries=2", "data.rotations=true")))
    n = plain["train"].shape[0]
    assert turned["train"].shape[0] == 4 * n
    np.testing.assert_array_equal(turned["train"][n : 2 * n], np.rot90(plain["train"], 1, axes=(2, 3)))
    np.testing.assert_array_equal(turned["test"], plain["test"])


def test_a_folder_in_omniglot_layout_gives_the_same_images_as_the_zip(tmp_path, omniglot):
    folder = omniglot_folder(omniglot, tmp_path / "omniglot", alphabets=5, characters=99, drawings=20)
    from_zip = data.load_splits(prepared(config(tmp_path, omniglot.zips[0])))
    from_folder = data.load_splits(prepared(config(tmp_path, folder)))
    assert from_zip.keys() == from_folder.keys()
    for split in from_zip:
        np.testing.assert_array_equal(from_zip[split], from_folder[split])


def test_user_tables_of_features_and_of_image_bytes(tmp_path):
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"label": np.repeat([f"c{i}" for i in range(6)], 5), "f1": rng.normal(size=30), "f2": rng.normal(size=30)})
    rows.to_csv(tmp_path / "features.csv", index=False)
    cfg = config(
        tmp_path,
        tmp_path / "features.csv",
        "data.name=table",
        "data.split=class",
        "data.features=[f1, f2]",
        "model.name=null",
        "model.width=null",
        "task.ways=2",
        "task.shots=1",
        "task.queries=2",
    )
    features = data.load_splits(prepared(cfg))
    assert features["train"].shape[1:] == (5, 2) and features["train"].shape[0] + features["test"].shape[0] == 6
    learner = build_learner(cfg)  # the data set's default model for features: the MLP, two features in, one logit per way out
    task = task_source(cfg, features["train"]).sample(np.random.default_rng(0))
    assert forward(learner.model, init_params(learner.model, 0), task.query_x).shape == (4, 2)
    every = np.concatenate([features["train"], features["test"]]).reshape(-1, 2)
    assert sorted(map(tuple, every)) == sorted(map(tuple, rows[["f1", "f2"]].to_numpy(np.float32)))

    images = pd.DataFrame(
        {"label": np.repeat(range(4), 3), "group": np.repeat(["a", "a", "b", "b"], 3), "image": [png(value) for value in range(0, 240, 20)]}
    )
    images.to_parquet(tmp_path / "images.parquet")
    cfg = config(
        tmp_path,
        tmp_path / "images.parquet",
        "data.name=table",
        "data.group_column=group",
        "data.test_size=0.5",
        "task.ways=2",
        "task.shots=1",
        "task.queries=2",
    )
    splits = data.load_splits(prepared(cfg))
    assert splits["train"].shape == (2, 3, 28, 28) and splits["test"].shape == (2, 3, 28, 28)
    assert set(np.concatenate([splits["train"], splits["test"]])[:, :, 0, 0].ravel().tolist()) == set(range(0, 240, 20))


def corrupt_zip(tmp_path, omniglot):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as z:
        z.writestr("set/Alpha/character01/01.png", png())
        z.writestr("set/Alpha/character01/02.png", b"not a png at all")
    return tmp_path / "bad.zip", ["bad.zip", "02.png", "not a readable image"]


def slip_zip(tmp_path, omniglot):
    with zipfile.ZipFile(tmp_path / "slip.zip", "w") as z:
        z.writestr("set/Alpha/character01/01.png", png())
        z.writestr("../../outside.png", png())
    return tmp_path / "slip.zip", ["slip.zip", "outside the target folder"]


def non_image_file(tmp_path, omniglot):
    folder = omniglot_folder(omniglot, tmp_path / "omniglot", alphabets=2, characters=2, drawings=4)
    (folder / next(folder.iterdir()).name / "character01" / "notes.txt").write_text("hello")
    return folder, ["notes.txt", "not a readable image"]


def empty_class(tmp_path, omniglot):
    folder = omniglot_folder(omniglot, tmp_path / "omniglot", alphabets=2, characters=2, drawings=4)
    (folder / next(folder.iterdir()).name / "character09").mkdir()
    return folder, ["character09", "empty class"]


def too_few_samples(tmp_path, omniglot):
    return omniglot_folder(omniglot, tmp_path / "omniglot", alphabets=4, characters=3, drawings=4), ["task.shots + task.queries", "only 4"]


def more_ways_than_classes(tmp_path, omniglot):
    return omniglot_folder(omniglot, tmp_path / "omniglot", alphabets=4, characters=3, drawings=20), ["task.ways", "only 3 classes"]


def more_held_out_than_there_are(tmp_path, omniglot):
    return omniglot_folder(omniglot, tmp_path / "omniglot", alphabets=4, characters=3), ["data.test_size", "13 classes held out", "only 12"]


def no_class_left_to_train(tmp_path, omniglot):
    return omniglot_folder(omniglot, tmp_path / "omniglot", alphabets=4, characters=3), ["data.val_size", "3 groups held out", "only 3"]


def missing_label_column(tmp_path, omniglot):
    pd.DataFrame({"name": ["a", "b"], "f1": [1.0, 2.0]}).to_csv(tmp_path / "t.csv", index=False)
    return tmp_path / "t.csv", ["t.csv", "no column 'label'", "data.label_column"]


def nan_feature(tmp_path, omniglot):
    pd.DataFrame({"label": ["a", "b", "c"], "f1": [1.0, float("nan"), 2.0]}).to_csv(tmp_path / "t.csv", index=False)
    return tmp_path / "t.csv", ["t.csv", "'f1'", "row 1"]


def checksum_mismatch(tmp_path, omniglot):
    renamed = tmp_path / "images_background_small2.zip"
    renamed.write_bytes(omniglot.zips[0].read_bytes())  # an official name with the wrong contents
    return renamed, ["images_background_small2.zip", "does not match", OMNIGLOT_CHECKSUMS["images_background_small2"].split(":")[1]]


TABLE = ["data.name=table", "data.split=class", "data.features=[f1]", "model.name=mlp", "model.width=null"]


@pytest.mark.parametrize(
    "make, overrides",
    [
        (corrupt_zip, []),
        (slip_zip, []),
        (non_image_file, []),
        (empty_class, []),
        (too_few_samples, ["task.ways=2", "task.shots=1", "task.queries=15"]),
        (more_ways_than_classes, ["task.ways=5", "data.split=group", "data.test_size=0.25"]),
        (more_held_out_than_there_are, ["data.split=class", "data.test_size=13"]),
        (no_class_left_to_train, ["data.split=group", "data.test_size=1", "data.val_size=3"]),
        (missing_label_column, TABLE),
        (nan_feature, TABLE),
        (checksum_mismatch, []),
    ],
)
def test_bad_input_is_one_line_naming_the_file_or_key_and_leaves_nothing_behind(tmp_path, omniglot, make, overrides):
    source, words = make(tmp_path, omniglot)
    with pytest.raises(data.DataError) as error:
        prepared(config(tmp_path, source, *overrides))
    message = str(error.value)
    assert len(message.splitlines()) == 1
    for word in words:
        assert word in message
    if make not in (too_few_samples, more_ways_than_classes):  # those are task checks against a good dataset
        assert built(tmp_path) == []


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files, honouring ``Range: bytes=N-`` as a resumable download server would."""

    ranges: list = []

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return self.send_error(404)
        body, asked = path.read_bytes(), self.headers.get("Range")
        self.ranges.append(asked)
        start = int(asked.removeprefix("bytes=").split("-")[0]) if asked else 0
        self.send_response(206 if asked else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """``serve(folder)``: the folder's files over HTTP on loopback; returns the base URL."""
    servers = []

    def start(folder: Path) -> str:
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(folder)))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    RangeHandler.ranges = []
    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def test_download_is_verified_and_resumes_a_partial_file(tmp_path, omniglot, serve):
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    name, whole = omniglot.zips[0].name, omniglot.zips[0].read_bytes()
    (downloads / f"{name}.part").write_bytes(whole[:100_000])
    folder = prepared(config(tmp_path, f"{serve(omniglot.folder)}/{name}"))
    assert RangeHandler.ranges == ["bytes=100000-"]
    assert (downloads / name).read_bytes() == whole
    assert data.manifest_of(folder)["sources"][0]["sha256"] == checksum(omniglot.zips[0])


def test_download_with_a_wrong_checksum_keeps_nothing(tmp_path, omniglot, serve):
    with pytest.raises(data.DataError, match="does not match the expected 0000"):
        prepared(config(tmp_path, f"{serve(omniglot.folder)}/{omniglot.zips[1].name}#sha256={'0' * 64}"))
    assert list((tmp_path / "cache" / "downloads").iterdir()) == [] and built(tmp_path) == []


def test_an_official_set_by_name_is_downloaded_once_verified_and_reused(tmp_path, omniglot, serve, monkeypatch):
    """The name -> URL -> checksum path of ``data.source: images_evaluation``, against a local copy of the host."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "images_evaluation.zip").write_bytes(omniglot.zips[1].read_bytes())
    (host / "images_background.zip").write_bytes(omniglot.zips[0].read_bytes())  # not the real set: its md5 differs
    monkeypatch.setattr(sources, "OMNIGLOT_URL", serve(host) + "/{name}.zip")
    served_md5 = hashlib.md5(omniglot.zips[1].read_bytes()).hexdigest()
    monkeypatch.setitem(sources.OMNIGLOT_CHECKSUMS, "images_evaluation", f"md5:{served_md5}")
    first = prepared(config(tmp_path, "images_evaluation"))
    again = prepared(config(tmp_path, "images_evaluation", "task.queries=5"))  # another task: the same download
    assert RangeHandler.ranges == [None] and data.manifest_of(first)["digest"] == data.manifest_of(again)["digest"]
    assert (tmp_path / "cache" / "downloads" / "images_evaluation.zip").read_bytes() == omniglot.zips[1].read_bytes()

    with pytest.raises(
        data.DataError, match=f"images_background.zip: md5 [0-9a-f]{{32}} does not match the expected {OMNIGLOT_CHECKSUMS['images_background'][4:]}"
    ):
        prepared(config(tmp_path, "images_background"))
    assert sorted(p.name for p in (tmp_path / "cache" / "downloads").iterdir()) == ["images_evaluation.zip"]


def test_a_stalled_download_gives_up_after_the_network_timeout(tmp_path):
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        with pytest.raises(data.DataError, match=r"cannot download http://127.0.0.1:\d+/images_background.zip \(timed out\)"):
            prepared(config(tmp_path, f"http://127.0.0.1:{silent.getsockname()[1]}/images_background.zip"))
    assert time.monotonic() - started < 2 * sources.NETWORK_TIMEOUT_S


def test_a_shipped_config_without_network_stops_at_once_naming_the_url_and_the_override(tmp_path):
    """What a user on an offline machine sees from ``python -m pipelines run omniglot``: a refused connection
    (a proxy on a closed port stands in for the missing network), one line, exit 2, no run left RUNNING."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"} | {"https_proxy": proxy, "HTTPS_PROXY": proxy}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [sys.executable, "-m", "pipelines", "run", "omniglot", f"--set=data.cache_dir={tmp_path / 'cache'}", "--tracking-uri", uri]
    done = subprocess.run(command, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    error = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and error.startswith("error: data.source: cannot download "), done.stderr[-2000:]
    assert sources.OMNIGLOT_URL.format(name="images_background") in error and "--set data.source=PATH" in error
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert runs and {r.info.status for r in runs} == {"FAILED"}


def test_validation_split_is_carved_from_training_groups_and_leaves_the_test_split_unchanged(tmp_path, omniglot):
    source = omniglot_folder(omniglot, tmp_path / "omniglot", alphabets=4, characters=3)
    common = ["task.ways=2", "task.queries=2", "data.test_size=1"]
    without = split_labels(prepared(config(tmp_path, source, *common)))
    folder = prepared(config(tmp_path, source, *common, "data.val_size=1"))
    found = split_labels(folder)
    assert set(data.load_splits(folder)) == {"train", "val", "test"}
    assert found["test"] == without["test"] and found["train"] | found["val"] == without["train"]
    groups = {split: {label.split("/")[0] for label in labels} for split, labels in found.items()}
    assert len(groups["val"]) == 1 and len(groups["train"]) == 2
    assert groups["train"].isdisjoint(groups["val"]) and groups["val"].isdisjoint(groups["test"])


def test_prepare_stage_logs_dataset_inputs_counts_and_manifest(tmp_path, omniglot, tracking):
    cfg = config(tmp_path, omniglot_folder(omniglot, tmp_path / "omniglot", drawings=20), "task.ways=2", "data.test_size=1", "data.val_size=1")
    mlflow.set_tracking_uri(tracking)
    with mlflow.start_run() as run:
        out = prepare_stage(cfg)
    logged = mlflow.get_run(run.info.run_id)
    manifest = data.manifest_of(out["dataset"])
    assert out["digest"] == manifest["digest"]
    inputs = {i.tags[0].value: i.dataset for i in logged.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"}
    for split, dataset in inputs.items():
        assert json.loads(dataset.source)["uri"] == str(Path(out["dataset"]) / f"{split}.parquet")
        assert dataset.digest == manifest["splits"][split]["sha256"][:16]
    assert sum(logged.data.metrics[f"{split}_classes"] for split in inputs) == 12
    assert mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/manifest.json") == manifest
