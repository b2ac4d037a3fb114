"""Preparing generated colour images on Ray Data: images per second at 1 and 2 CPUs, and peak memory of the driver
and of the busiest decoding worker, for 10k, 50k and 200k 84x84 images.

The images are mini-ImageNet's folder form (``images/`` and the three CSVs, its published class names), or with
``--form pickles`` tieredImageNet's pickles of PNGs (and the size of those pickles is printed too), each class one
colour and each image that colour with its own noise, written as PNG into a temporary folder outside the
repository (``--root``), and deleted afterwards. Each size is prepared once per CPU count into an empty cache, in a
fresh process that starts its own local Ray with that many CPUs, with ``data.prepare_memory_mb`` as ``--memory-mb``.

    nice .venv/bin/python -m benchmarks.stream_data --sizes 10000 50000 200000
"""

import argparse
import io
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from data.published import class_lists


def image(label: str, index: int, side: int) -> bytes:
    """A PNG: the class's colour plus this image's noise, from fixed seeds."""
    base = np.random.default_rng(zlib.crc32(label.encode())).integers(30, 226, size=3)
    noise = np.random.default_rng([zlib.crc32(label.encode()), index]).integers(-25, 26, size=(side, side, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def write_class(args: tuple[Path, str, int, int]) -> list[str]:
    folder, label, per_class, side = args
    names = []
    for i in range(per_class):
        name = f"{label}{i:08d}.png"
        (folder / "images" / name).write_bytes(image(label, i, side))
        names.append(name)
    return names


def mini_imagenet_images(folder: Path, images: int, side: int = 84, processes: int = 2) -> Path:
    """``images`` generated images (rounded down to a whole number per class) in mini-ImageNet's folder form."""
    (folder / "images").mkdir(parents=True)
    lists = class_lists("mini_imagenet")
    per_class = images // sum(len(labels) for labels in lists.values())
    with ProcessPoolExecutor(processes) as pool:
        for split, labels in lists.items():
            rows = ["filename,label"]
            for label, names in zip(labels, pool.map(write_class, [(folder, label, per_class, side) for label in labels]), strict=True):
                rows += [f"{name},{label}" for name in names]
            (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


def tiered_imagenet_pickles(folder: Path, images: int, side: int = 84) -> Path:
    """``images`` generated images (rounded down to a whole number per class) in tieredImageNet's pickles: a list of
    PNGs as uint8 arrays per split, and its labels."""
    folder.mkdir(parents=True)
    lists = class_lists("tiered_imagenet")
    per_class = images // sum(len(labels) for labels in lists.values())
    for split, labels in lists.items():
        pngs = [np.frombuffer(image(label, i, side), np.uint8) for label in labels for i in range(per_class)]
        (folder / f"{split}_images_png.pkl").write_bytes(pickle.dumps(pngs))
        meta = {"label_specific": np.repeat(np.arange(len(labels)), per_class), "label_specific_str": labels}
        (folder / f"{split}_labels.pkl").write_bytes(pickle.dumps(meta))
    return folder


FORMS = {"folder": ("mini_imagenet", mini_imagenet_images), "pickles": ("tiered_imagenet", tiered_imagenet_pickles)}


def measure(spec: dict) -> dict:
    """One preparation in this process, on a fresh local Ray of ``spec["cpus"]`` CPUs: what ``preparation.json`` says."""
    import ray

    import data
    from pipelines.build import prepared
    from pipelines.config import load

    ray.init(address="local", num_cpus=spec["cpus"], include_dashboard=False, log_to_driver=False)
    overrides = [
        f"data.name={spec['name']}", f"data.source={spec['source']}", "data.image_size=84", f"data.cache_dir={spec['cache']}",
        f"data.prepare_cpus={spec['cpus']}", f"data.prepare_memory_mb={spec['memory_mb']}", "model.name=conv4", "task.ways=5", "task.shots=1", "task.queries=1",
    ]  # fmt: skip
    return data.preparation_of(prepared(load(None, overrides)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--memory-mb", type=int, default=256)
    parser.add_argument("--form", choices=FORMS, default="folder", help="mini-ImageNet's folder form, or tieredImageNet's pickles")
    parser.add_argument("--root", default=None, help="where the generated images go (default: the system's temporary folder)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    name, make = FORMS[args.form]
    print(f"{'images':>8} {'cpus':>4} {'images/s':>9} {'speed-up':>8} {'driver MiB':>10} {'worker MiB':>10} {'seconds':>8}")
    for size in args.sizes:
        root = Path(tempfile.mkdtemp(prefix="stream-data-", dir=args.root))
        try:
            source = make(root / "source", size)
            if args.form == "pickles":
                print(
                    f"pickles of {size:,} images: {sum(p.stat().st_size for p in source.glob('*_images_png.pkl')) / (1 << 20):,.0f} MiB", flush=True
                )
            first = None
            for cpus in args.cpus:
                spec = {"name": name, "source": str(source), "cache": str(root / f"cache{cpus}"), "cpus": cpus, "memory_mb": args.memory_mb}
                out = subprocess.run([sys.executable, "-m", "benchmarks.stream_data", "--measure", json.dumps(spec)], capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"{size} images on {cpus} CPUs failed:\n{out.stderr[-3000:]}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                first = first or result["images_per_s"]
                print(
                    f"{result['images']:>8} {cpus:>4} {result['images_per_s']:>9.0f} {result['images_per_s'] / first:>8.2f} "
                    f"{result['driver_peak_mib']:>10.0f} {result['worker_peak_mib']:>10.0f} {result['seconds']:>8.1f}",
                    flush=True,
                )
                shutil.rmtree(root / f"cache{cpus}")
        finally:
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
