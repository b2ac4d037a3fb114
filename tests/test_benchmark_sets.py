"""The standard few-shot benchmarks from local copies in each of their shared formats: published splits, colour
images kept as uint8 and normalised per task, the standard augmentation, and one-line errors for bad copies."""

import pickle
import shutil

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import data
from data.published import class_lists
from meta_core.algorithms import base
from meta_core.tasks import as_inputs, crop_and_flip, task_rng
from pipelines.build import prepared, task_source
from pipelines.config import ConfigError, load
from pipelines.pipeline import run
from pipelines.serving import request
from tests.benchmark_data import (
    FORMATS,
    PER_CLASS,
    cifar100_archive,
    cub_archive,
    mini_imagenet_folder,
    mini_imagenet_pickles,
    tar_gz,
    tiered_imagenet,
)

SIZE = 16  # a small image side (conv4 pools it 4 times) keeps these fast; the shipped configs use 84 (32 for CIFAR)


def config(tmp_path, fmt: str, *overrides: str):
    name, make = FORMATS[fmt]
    source = make(tmp_path / "copy")
    base = [f"data.name={name}", f"data.source={source}", f"data.image_size={SIZE}", f"data.cache_dir={tmp_path / 'cache'}"]
    return load(None, [*base, "algorithm.name=protonet", "task.ways=5", "task.shots=1", "task.queries=1", "model.width=4", *overrides])


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_prepares_its_published_split_as_uint8_colour_images(tmp_path, fmt):
    cfg = config(tmp_path, fmt)
    folder = prepared(cfg)
    manifest, splits = data.manifest_of(folder), data.load_splits(folder)
    published = class_lists(cfg.data.name)
    assert manifest["splits"]["by"] == "published"
    for split, classes in published.items():
        assert splits[split].shape == (len(classes), PER_CLASS, 3, SIZE, SIZE) and splits[split].dtype == np.uint8
    labels = pq.read_table(folder / "train.parquet", columns=["label"]).column("label").unique().to_pylist()
    assert sorted(label.split("/", 1)[1] for label in labels) == sorted(published["train"])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_trains_evaluates_registers_and_serves(ray_local, tracking, tmp_path, fmt):
    cfg = config(tmp_path, fmt, "train.steps=2", "train.meta_batch=2", "eval.tasks=4", "cluster.workers=1", "register.model_name=standard")
    parent = mlflow.get_run(run(cfg, tracking))
    assert parent.info.status == "FINISHED" and 0 <= parent.data.metrics["eval_post_adapt_acc"] <= 1
    served = mlflow.pyfunc.load_model("models:/standard@champion")
    test = data.load_splits(prepared(cfg))["test"]
    support, query = test[:5, 0].copy(), test[:5, 1].copy()
    frame = request(support / 255, np.arange(5), query / 255)  # a request's pixels are in [0, 1]
    answer, model = served.predict(frame), served.unwrap_python_model()
    support_x, _, query_x = model.tensors(frame)
    torch.testing.assert_close(support_x, as_inputs(support, cfg.dataset.stats))  # normalised as training tasks are
    torch.testing.assert_close(query_x, as_inputs(query, cfg.dataset.stats))
    trained = base.answer(model.algo, model.params, support_x, torch.arange(5), query_x, 0)
    np.testing.assert_allclose(np.stack(answer["probabilities"]), trained.softmax(-1).detach().numpy(), atol=1e-5)


def test_images_are_normalised_per_channel_by_the_sets_statistics(tmp_path):
    cfg = config(tmp_path, "cifar_fs")
    train = data.load_splits(prepared(cfg))["train"]
    task = task_source(cfg, train).sample(task_rng(0, 0, 0, 0))
    (mean, std), pixels = cfg.dataset.stats, torch.tensor(train).float() / 255
    assert task.support_x.shape == (5, 3, SIZE, SIZE) and task.support_x.dtype == torch.float32
    for channel in range(3):  # every value is (pixel - mean) / std of its channel
        values = task.support_x[:, channel].unique()
        originals = (pixels[:, :, channel].unique() - mean[channel]) / std[channel]
        assert torch.isin(values.round(decimals=4), originals.round(decimals=4)).all()
    assert abs(float(task.support_x.mean())) < 2  # centred, where raw pixels would average about 127


def test_augmentation_crops_and_flips_training_tasks_only_and_follows_the_task_key(tmp_path):
    cfg = config(tmp_path, "mini_imagenet-pickles", "data.augment=true")
    splits = data.load_splits(prepared(cfg))
    plain = config(tmp_path / "plain", "mini_imagenet-pickles")

    def draw(c, split, key=0):
        return task_source(c, splits[split], split).sample(task_rng(0, 0, 0, key))

    augmented, original = draw(cfg, "train"), draw(plain, "train")
    assert torch.equal(augmented.support_y, original.support_y) and not torch.equal(augmented.support_x, original.support_x)
    assert torch.equal(draw(cfg, "train").support_x, augmented.support_x)  # the same task key, the same crops
    for split in ("val", "test"):
        assert torch.equal(draw(cfg, split).query_x, draw(plain, split).query_x)


def test_crop_and_flip_shifts_each_image_within_its_padding_and_mirrors_about_half():
    grid = (np.arange(16)[:, None] * 16 + np.arange(16)).astype(np.uint8)  # each pixel's value is its position
    out = crop_and_flip(np.broadcast_to(grid, (4, 10, 16, 16)), np.random.default_rng(0))
    index = np.arange(2, 14)
    shifts, mirrored = set(), 0
    for image in out.reshape(-1, 16, 16).astype(int):
        centre = image[2:-2, 2:-2]  # the padding is 2 at 16: the centre always comes from the image
        rows, cols = centre // 16 - index[:, None], centre % 16
        flipped = cols[0, 0] > cols[0, 1]
        cols = cols + index if flipped else cols - index  # mirrored: a column's value falls as its index rises
        assert len(np.unique(rows)) == 1 and len(np.unique(cols)) == 1  # one shift for the whole image
        shifts.add((int(rows[0, 0]), int(cols[0, 0]) - 15 * flipped))
        mirrored += flipped
    assert all(-2 <= dy <= 2 and -2 <= dx <= 2 for dy, dx in shifts) and len(shifts) > 5
    assert 10 < mirrored < 30  # of 40


def rename_class(listing):
    listing.write_text(listing.read_text().replace(",n01930112", ",n99999999"))  # the label column only


def drop_key(path, key):
    content = pickle.loads(path.read_bytes())
    del content[key]
    path.write_bytes(pickle.dumps(content))


def truncate(archive):
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])


def source_of(copy):
    """The copy as data.source names it: the archive inside the folder, or the folder."""
    archives = [p for p in copy.iterdir() if p.name.endswith((".tar.gz", ".tgz"))]
    return archives[0] if archives else copy


@pytest.mark.parametrize(
    "break_copy, error",
    [
        (lambda root: (mini_imagenet_folder(root), (root / "val.csv").unlink()), r"val\.csv: missing"),
        (
            lambda root: (mini_imagenet_folder(root), (root / "images" / "n0153282900000000.jpg").write_bytes(b"not a jpeg")),
            r"n0153282900000000\.jpg: not a readable image",
        ),
        (
            lambda root: (mini_imagenet_folder(root), rename_class(root / "test.csv")),
            r"test\.csv: its classes do not match the published test list \(1 missing",
        ),
        (
            lambda root: (mini_imagenet_pickles(root), drop_key(root / "mini-imagenet-cache-validation.pkl", "class_dict")),
            r"mini-imagenet-cache-validation\.pkl: expected a dict with keys \['image_data', 'class_dict'\]",
        ),
        (lambda root: (tiered_imagenet(root), (root / "test_labels.pkl").unlink()), r"test_labels\.pkl: missing"),
        (lambda root: truncate(cifar100_archive(root)), r"cifar-100-standin\.tar\.gz: not a readable \.tar\.gz, or truncated"),
        (lambda root: truncate(cub_archive(root)), r"CUB_200_2011\.tgz: not a readable \.tgz, or truncated"),
    ],
    ids=[
        "missing split file",
        "image that does not decode",
        "class list mismatch",
        "pickle with wrong keys",
        "missing labels file",
        "truncated cifar",
        "truncated cub",
    ],
)
def test_a_bad_copy_fails_in_one_line_naming_the_file(tmp_path, break_copy, error):
    break_copy(tmp_path / "copy")
    name = next((n for key, n in {"cifar": "cifar_fs", "CUB_": "cub", "test_labels": "tiered_imagenet"}.items() if key in error), "mini_imagenet")
    cache = tmp_path / "cache"
    cfg = load(
        None, [f"data.name={name}", f"data.source={source_of(tmp_path / 'copy')}", f"data.cache_dir={cache}", "task.shots=1", "task.queries=1"]
    )
    with pytest.raises(data.DataError, match=error) as raised:
        prepared(cfg)
    assert "\n" not in str(raised.value)
    assert not [p for p in cache.iterdir() if p.name != "downloads"]  # nothing half-written


def test_the_official_cifar_archive_is_verified_by_its_name(tmp_path):
    standin = cifar100_archive(tmp_path / "copy")
    official = shutil.copy(standin, tmp_path / "cifar-100-python.tar.gz")
    with pytest.raises(data.DataError, match="does not match the expected eb9058c3a382ffc7106e4002c42a8d85"):
        prepared(load(None, ["data.name=cifar_fs", f"data.source={official}", f"data.cache_dir={tmp_path / 'cache'}", "data.image_size=16"]))


def test_a_paper_config_needs_a_copy_of_a_set_without_a_download():
    with pytest.raises(ConfigError, match=r"^config key 'data.source': mini_imagenet needs a folder holding images/"):
        load("papers/maml_mini_imagenet_1shot")
    assert load("papers/maml_cifar_fs_1shot").data.source == "cifar-100-python"  # an official download
    with pytest.raises(ConfigError, match=r"^config key 'data.val_size': cifar_fs keeps its published train/val/test split"):
        load("papers/maml_cifar_fs_1shot", ["data.val_size=0.2"])


def test_cubs_archive_is_unpacked_once_and_prepares_as_its_folder_does(tmp_path):
    archive = cub_archive(tmp_path / "copy")
    folder = tmp_path / "unpacked"
    shutil.unpack_archive(archive, folder)
    fields = ["data.name=cub", f"data.image_size={SIZE}", f"data.cache_dir={tmp_path / 'cache'}", "task.shots=1", "task.queries=1"]
    from_archive, from_folder = (prepared(load(None, [*fields, f"data.source={source}"])) for source in (archive, folder))
    for split in ("train", "val", "test"):
        assert (from_archive / f"{split}.npy").read_bytes() == (from_folder / f"{split}.npy").read_bytes()
    # its images were unpacked, member by member, into the download cache, where its next preparation reads them
    (unpacked,) = (tmp_path / "cache" / "downloads").glob("CUB_200_2011.tgz.unpacked-*")
    assert len(list(unpacked.glob("images/*/*.jpg"))) == 200 * PER_CLASS
    stamp = unpacked.stat().st_mtime_ns
    prepared(load(None, [*fields, f"data.source={archive}", "data.image_size=8"]))
    assert unpacked.stat().st_mtime_ns == stamp and len(list((tmp_path / "cache" / "downloads").iterdir())) == 1


def test_an_archive_member_that_climbs_out_of_its_class_folder_is_refused_and_nothing_is_left(tmp_path):
    (tmp_path / "copy").mkdir()
    archive = tar_gz(tmp_path / "copy" / "CUB_200_2011.tgz", {"CUB_200_2011/images/001.Bird/a.jpg": b"x", "CUB_200_2011/images/../b.jpg": b"x"})
    cfg = load(None, ["data.name=cub", f"data.source={archive}", f"data.cache_dir={tmp_path / 'cache'}", "task.shots=1", "task.queries=1"])
    with pytest.raises(data.DataError, match=r"^\S+CUB_200_2011\.tgz: CUB_200_2011/images/\.\./b\.jpg: a member name with '\.' or '\.\.' "):
        prepared(cfg)
    assert not list((tmp_path / "cache" / "downloads").iterdir())
