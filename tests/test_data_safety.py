"""Hostile or damaged inputs to prepare: each is refused in one line naming the file, before it costs memory, and
leaves nothing in the cache; and what is read is what the file holds (no labels merged, no silent garbage)."""

import io
import struct
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFile

import data
from data import files, jpeg
from data.omniglot import decode
from pipelines.build import prepared
from pipelines.config import load
from tests.benchmark_data import image, lists, mini_imagenet_folder

MiB = 1 << 20
TABLE = [
    "data.name=table",
    "data.split=class",
    "data.test_size=1",
    "model.name=mlp",
    "model.width=null",
    "task.ways=2",
    "task.shots=1",
    "task.queries=1",
]
OMNIGLOT = ["data.name=omniglot", "data.split=class", "data.test_size=1", "task.ways=2", "task.shots=1", "task.queries=1"]


def refused(tmp_path: Path, source: Path, overrides: list[str], *words: str) -> str:
    """Prepare ``source``; it must fail with one line holding ``words`` and leave nothing in the cache."""
    cache = tmp_path / "cache"
    with pytest.raises(data.DataError) as error:
        prepared(load(None, [f"data.source={source}", f"data.cache_dir={cache}", *overrides]))
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    assert not cache.exists() or not [p for p in cache.iterdir() if p.name != "downloads"]
    return message


def png(value: int, side: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("L", (side, side), value).save(out, format="PNG")
    return out.getvalue()


def jpg(label: str = "n01532829", index: int = 0, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image(label, index, 48)).save(out, format="JPEG", **options)
    return out.getvalue()


def peak_bytes(action) -> int:
    """The most memory Python objects held while ``action`` ran (a bomb read whole would show here)."""
    tracemalloc.start()
    try:
        action()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# --- tables: labels are text, features are finite ---


def test_csv_labels_are_the_text_they_hold_not_a_number_parsed_from_it(tmp_path):
    rows = pd.DataFrame({"label": ["7", "007", "7.0", "8"] * 3, "f1": np.arange(12, dtype=float)})
    rows.to_csv(tmp_path / "t.csv", index=False)
    overrides = [f"data.source={tmp_path / 't.csv'}", f"data.cache_dir={tmp_path / 'cache'}", "data.features=[f1]", *TABLE, "data.test_size=2"]
    folder = prepared(load(None, overrides))
    labels = set()
    for split in data.split_names(data.manifest_of(folder)):
        labels |= set(pq.read_table(folder / f"{split}.parquet", columns=["label"]).column("label").to_pylist())
    assert sorted(label.split("/")[-1] for label in labels) == ["007", "7", "7.0", "8"]


def test_an_empty_csv_label_is_a_missing_value(tmp_path):
    (tmp_path / "t.csv").write_text("label,f1\na,1\n,2\nb,3\n")
    refused(tmp_path, tmp_path / "t.csv", ["data.features=[f1]", *TABLE], "t.csv", "label column 'label' has missing values")


@pytest.mark.parametrize("value, shown", [("inf", "inf"), ("-inf", "-inf"), ("1e300", "1e+300"), ("-4e38", "-4e+38")])
def test_non_finite_or_float32_overflowing_features_are_refused_naming_file_row_and_column(tmp_path, value, shown):
    (tmp_path / "t.csv").write_text(f"label,f0,f1\na,0,1\nb,0,{value}\nc,0,2\n")
    refused(tmp_path, tmp_path / "t.csv", ["data.features=[f0, f1]", *TABLE], "t.csv", "feature column 'f1'", f"has {shown} in row 1", "finite")


def test_infinite_features_in_parquet_are_refused_too(tmp_path):
    pd.DataFrame({"label": ["a", "b", "c"], "f1": [1.0, 2.0, -np.inf]}).to_parquet(tmp_path / "t.parquet")
    refused(tmp_path, tmp_path / "t.parquet", ["data.features=[f1]", *TABLE], "t.parquet", "'f1'", "-inf in row 2")


# --- archives: a bomb is refused before it is read ---


def zeros_member(archive: zipfile.ZipFile, name: str, size: int) -> None:
    """A member of ``size`` zero bytes, written in chunks (deflate makes it about a thousandth of that)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w") as member:
        for _ in range(size // MiB):
            member.write(bytes(MiB))


def omniglot_folder(root: Path) -> Path:
    """Two characters of two drawings each, in Omniglot's folder layout."""
    for c in range(2):
        (root / "Alpha" / f"character0{c}").mkdir(parents=True)
        for d in range(2):
            (root / "Alpha" / f"character0{c}" / f"{d}.png").write_bytes(png(40 * c + d))
    return root


def omniglot_zip(path: Path, extra=None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for c in range(2):
            for d in range(2):
                archive.writestr(f"set/Alpha/character0{c}/{d}.png", png(40 * c + d))
        if extra:
            extra(archive)
    return path


def test_a_deflate_bomb_in_a_zip_is_refused_from_its_header_before_it_is_read(tmp_path):
    bomb = omniglot_zip(tmp_path / "bomb.zip", lambda z: zeros_member(z, "set/Alpha/character00/9.png", files.IMAGE_BYTES + MiB))
    assert bomb.stat().st_size < files.IMAGE_BYTES // 500
    peak = peak_bytes(lambda: refused(tmp_path, bomb, OMNIGLOT, "bomb.zip/set/Alpha/character00/9.png", "68,157,440 bytes, more than the 67,108,864"))
    assert peak < files.IMAGE_BYTES // 4


def test_a_zip_header_that_understates_a_member_is_refused_in_one_line(tmp_path):
    name = b"set/Alpha/character00/9.png"
    path = omniglot_zip(tmp_path / "liar.zip", lambda z: zeros_member(z, name.decode(), 2 * MiB))
    raw = bytearray(path.read_bytes())
    central = raw.rindex(b"PK\x01\x02", 0, raw.rindex(name))  # the member's entry in the central directory
    assert raw[central + 46 : central + 46 + len(name)] == name
    struct.pack_into("<I", raw, central + 24, 100)  # its uncompressed size
    path.write_bytes(bytes(raw))
    assert zipfile.ZipFile(path).getinfo(name.decode()).file_size == 100
    refused(tmp_path, path, OMNIGLOT, "liar.zip/set/Alpha/character00/9.png", "not a readable zip entry")


def test_a_zip_whose_members_add_up_to_far_more_than_it_is_refused_before_any_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "EXPANSION_FLOOR", 2 * MiB)  # the floor is a GiB; lower it to keep the test small

    def many(archive):
        for i in range(3):
            zeros_member(archive, f"set/Alpha/character01/big{i}.png", MiB)

    path = omniglot_zip(tmp_path / "many.zip", many)
    refused(tmp_path, path, OMNIGLOT, "many.zip", "its members decode to more than 2,097,152 bytes", "compression bomb")


class Zeros(io.RawIOBase):
    """``size`` zero bytes, read in chunks: a huge tar member without holding it."""

    def __init__(self, size: int):
        self.left = size

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n

    def readable(self) -> bool:
        return True


def test_a_deflate_bomb_in_a_tar_archive_is_refused_before_it_is_read(tmp_path):
    label = lists("cub")["train"][0]
    with tarfile.open(tmp_path / "CUB_200_2011.tgz", "w:gz", compresslevel=1) as archive:
        info = tarfile.TarInfo(f"CUB_200_2011/images/{label}/bomb.jpg")
        info.size = files.IMAGE_BYTES + MiB
        archive.addfile(info, io.BufferedReader(Zeros(info.size)))
    peak = peak_bytes(lambda: refused(tmp_path, tmp_path / "CUB_200_2011.tgz", ["data.name=cub"], "bomb.jpg", "more than the 67,108,864"))
    assert peak < files.IMAGE_BYTES // 4


def test_a_tar_archive_whose_members_add_up_to_far_more_than_it_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "EXPANSION_FLOOR", 2 * MiB)
    with tarfile.open(tmp_path / "cifar.tar.gz", "w:gz") as archive:
        for name in ("meta", "test", "train"):
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = MiB
            archive.addfile(info, io.BufferedReader(Zeros(info.size)))
    refused(tmp_path, tmp_path / "cifar.tar.gz", ["data.name=cifar_fs"], "cifar.tar.gz", "decode to more than 2,097,152 bytes")


def test_an_oversized_file_in_a_folder_source_is_refused_from_its_size(tmp_path):
    folder = omniglot_folder(tmp_path / "omniglot")
    with open(folder / "Alpha" / "character00" / "9.png", "wb") as f:
        f.truncate(files.IMAGE_BYTES + MiB)  # sparse: no disk, no time
    peak = peak_bytes(lambda: refused(tmp_path, folder, OMNIGLOT, "9.png", "more than the 67,108,864"))
    assert peak < files.IMAGE_BYTES // 4


# --- folder sources stay inside their folder ---


def secret(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere" / "secret.jpg"
    path.parent.mkdir()
    path.write_bytes(jpg())
    return path


def absolute_row(tmp_path, copy):
    listing = copy / "train.csv"
    lines = listing.read_text().splitlines()
    lines[1] = f"{secret(tmp_path)},{lines[1].split(',')[1]}"
    listing.write_text("\n".join(lines) + "\n")
    return "listed in train.csv line 2"


def parent_row(tmp_path, copy):
    listing = copy / "train.csv"
    secret(tmp_path)
    lines = listing.read_text().splitlines()
    lines[1] = f"../../elsewhere/secret.jpg,{lines[1].split(',')[1]}"
    listing.write_text("\n".join(lines) + "\n")
    return "secret.jpg"


def symlinked_image(tmp_path, copy):
    victim = sorted((copy / "images").iterdir())[0]
    victim.unlink()
    victim.symlink_to(secret(tmp_path))
    return victim.name


def symlinked_listing(tmp_path, copy):
    outside = tmp_path / "elsewhere-listing.csv"
    (copy / "val.csv").rename(outside)
    (copy / "val.csv").symlink_to(outside)
    return "val.csv"


@pytest.mark.parametrize("escape", [absolute_row, parent_row, symlinked_image, symlinked_listing])
def test_a_mini_imagenet_folder_reads_only_files_inside_it(tmp_path, escape):
    copy = mini_imagenet_folder(tmp_path / "copy")
    name = escape(tmp_path, copy)
    overrides = ["data.name=mini_imagenet", "data.image_size=8", "task.shots=1", "task.queries=1"]
    refused(tmp_path, copy, overrides, name, "outside the source folder", str(copy.resolve()))


def test_an_omniglot_folder_reads_only_files_inside_it(tmp_path):
    folder = omniglot_folder(tmp_path / "omniglot")
    outside = tmp_path / "outside.png"
    outside.write_bytes(png(200))
    (folder / "Alpha" / "character01" / "2.png").symlink_to(outside)
    refused(tmp_path, folder, OMNIGLOT, "2.png", "outside the source folder")


def test_a_symlink_that_stays_inside_the_folder_is_read(tmp_path):
    folder = omniglot_folder(tmp_path / "omniglot")
    (folder / "Alpha" / "character01" / "2.png").symlink_to(folder / "Alpha" / "character01" / "0.png")
    overrides = [f"data.source={folder}", f"data.cache_dir={tmp_path / 'cache'}", *OMNIGLOT, "task.ways=1"]
    splits = data.load_splits(prepared(load(None, overrides)))
    assert sorted(split.shape[1] for split in splits.values()) == [2, 3]  # the link is character01's third drawing


def test_a_cifar_folder_reads_only_files_inside_it(tmp_path):
    outside = tmp_path / "outside"
    outside.write_bytes(b"x")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "meta").symlink_to(outside)
    for name in ("train", "test"):
        (folder / name).write_bytes(b"x")
    refused(tmp_path, folder, ["data.name=cifar_fs"], "meta", "outside the source folder")


# --- images: a damaged one is refused, not decoded to garbage ---


def scan_start(raw: bytes) -> int:
    sos = raw.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(raw[sos + 2 : sos + 4], "big")


def middle(raw: bytes) -> int:
    return (scan_start(raw) + len(raw)) // 2


# Damage that throws the Huffman codes out of step with the blocks. (Damage that leaves the codes in step, as a
# byte changed in place often does, is valid JPEG data: no decoder can tell it from an image.)
CORRUPTIONS = {
    "bytes inserted": lambda raw: raw[: middle(raw)] + b"junk" * 16 + raw[middle(raw) :],
    "bytes dropped": lambda raw: raw[: middle(raw)] + raw[middle(raw) + 100 :],
    "bytes zeroed": lambda raw: raw[: middle(raw)] + bytes(100) + raw[middle(raw) + 100 :],
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS)
def test_a_jpeg_corrupted_mid_stream_is_refused_in_one_line_naming_the_file(tmp_path, corrupt):
    good = [jpg("n01532829", i) for i in range(4)]
    damaged = corrupt(good[3])
    with Image.open(io.BytesIO(damaged)) as plain:
        plain.load()  # PIL alone decodes it without a word
    pd.DataFrame({"label": ["a", "a", "b", "b"], "image": [*good[:3], damaged]}).to_parquet(tmp_path / "images.parquet")
    overrides = [*TABLE[:3], "task.ways=2", "task.shots=1", "task.queries=1"]
    refused(tmp_path, tmp_path / "images.parquet", overrides, "images.parquet row 3 column 'image'", "not a readable image", "corrupt JPEG data")


def test_a_missing_image_in_a_table_is_refused_in_one_line_naming_its_row(tmp_path):
    pd.DataFrame({"label": ["a", "a", "b", "b"], "image": [jpg("n01532829", 0), jpg("n01532829", 1), None, jpg("n01532829", 2)]}).to_parquet(
        tmp_path / "images.parquet"
    )
    overrides = [*TABLE[:3], "task.ways=2", "task.shots=1", "task.queries=1"]
    refused(tmp_path, tmp_path / "images.parquet", overrides, "images.parquet: image column 'image' has a missing value in row 2")


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS)
def test_corruption_past_the_first_window_of_a_large_jpeg_is_found(corrupt):
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(200, 300, 3), dtype=np.uint8)).save(out, format="JPEG", quality=95)
    raw = out.getvalue()
    assert middle(raw) - scan_start(raw) > jpeg.WINDOW
    with pytest.raises(ValueError, match="^corrupt JPEG data"):
        jpeg.check(corrupt(raw))


def test_a_corrupt_jpeg_in_a_mini_imagenet_folder_is_refused(tmp_path):
    copy = mini_imagenet_folder(tmp_path / "copy")
    victim = sorted((copy / "images").iterdir())[5]
    victim.write_bytes(CORRUPTIONS["bytes inserted"](victim.read_bytes()))
    overrides = ["data.name=mini_imagenet", "data.image_size=8", "task.shots=1", "task.queries=1"]
    refused(tmp_path, copy, overrides, victim.name, "not a readable image (ValueError: corrupt JPEG data")


JPEG_FORMS = {
    "baseline 4:2:0": {},
    "4:4:4": {"subsampling": 0},
    "4:2:2": {"subsampling": 1},
    "optimised tables": {"optimize": True},
    "high quality": {"quality": 98},
    "progressive": {"progressive": True},
    "restart markers": {"restart_marker_blocks": 3},
}


@pytest.mark.parametrize("options", JPEG_FORMS.values(), ids=JPEG_FORMS)
@pytest.mark.parametrize("shape", [(48, 48, 3), (37, 53, 3), (21, 70), (200, 300, 3)])  # the last over a jpeg.WINDOW
def test_whole_jpegs_of_every_form_pass_the_check_and_decode_as_pil_decodes_them(options, shape):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, size=shape, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", **options)
    raw = out.getvalue()
    jpeg.check(raw)
    with Image.open(io.BytesIO(raw)) as plain:
        expected = np.asarray(plain.convert("RGB").resize((16, 16), Image.Resampling.LANCZOS)).transpose(2, 0, 1)
    np.testing.assert_array_equal(decode(raw, 16, "x.jpg", colour=True), expected)


@pytest.mark.parametrize("whole", [png(100, 64), jpg()], ids=["png", "jpeg"])
def test_a_truncated_image_is_refused_even_where_pil_is_told_to_load_truncated_images(monkeypatch, whole):
    cut = whole[: len(whole) - 40]
    with pytest.raises(data.DataError, match=r"^cut: not a readable image"):
        decode(cut, 8, "cut")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(data.DataError, match=r"^cut: not a readable image .*LOAD_TRUNCATED_IMAGES is set"):
        decode(cut, 8, "cut")


def test_nothing_in_the_project_tells_pil_to_load_truncated_images():
    import pipelines.cli  # noqa: F401  everything a command imports

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_pil_warnings_while_reading_an_image_are_errors(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 32 * 32)  # a decompression bomb: PIL only warns below twice this
    with pytest.raises(data.DataError, match=r"^big\.png: not a readable image \(DecompressionBombWarning"):
        decode(png(0, 40), 8, "big.png")
