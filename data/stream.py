"""A split written in bounded batches: its rows listed first (images still encoded, or a reader's arrays not yet
resized), then decoded one row group at a time, in this process or over the cluster's CPUs, and appended in row
order. Rows that name their image's file go to Ray Data. Rows of a pickle (where in it an image's bytes lie) or
that carry their image's bytes (a table's) are fanned out to Ray tasks as the batches are written, each task
reading its batch's images from the pickle or getting them with its rows: so those bytes never all sit in the
object store, and the tasks start decoding at once.

Each split becomes ``<split>.parquet`` (the dataset, one row group per batch) and ``<split>.npy`` (the same samples
as one raw (classes, samples, ...) array, which workers memory-map). A batch is a fixed number of rows, set by the
sample's size alone, so the files are the same bytes however many CPUs decoded them and whatever memory bound
applied: the bound sets only how many batches are in flight at once.
"""

import os
import pickle
import resource
import sys
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.files import folder_file
from data.pickled import Span, read_span
from data.sources import DataError

MiB = 1 << 20
ROW_GROUP_BYTES = 2 * MiB  # the samples of one batch, one Parquet row group: a batch's memory is a few times this
MIN_MEMORY_MB = 32  # data.prepare_memory_mb's floor: a few batches in flight
PARALLEL_ROWS = 20_000  # encoded images from which data.prepare_cpus: null decodes on Ray Data (below, starting it costs more)
PROGRESS_S = 5.0  # seconds between progress lines


@dataclass(frozen=True, slots=True)
class Encoded:
    """One image still encoded: member ``name`` of the zip ``source``, the file ``name`` of the folder ``source``, or
    image ``name`` of the file ``source`` whose bytes lie at ``span`` (an image of a pickle) or are ``raw`` (an image
    of a pickle or table read once); decoded where its batch is (``omniglot.decode``), which reads it from its file
    there, or gets the ``raw`` bytes that travel with the batch."""

    source: str
    name: str
    size: int
    invert: bool = False
    colour: bool = False
    raw: bytes | None = None
    span: Span | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return (3, self.size, self.size) if self.colour else (self.size, self.size)

    @property
    def where(self) -> str:
        """The image as an error names it."""
        if self.raw is not None or self.span is not None:
            return f"{self.source} {self.name}"
        return f"{self.source}/{PurePosixPath(self.name.replace(chr(92), '/'))}"


@dataclass(frozen=True, eq=False)
class Pixels:
    """Image ``index`` of an (N, H, W, 3) uint8 array a reader holds (a pickle's decoded images), resized to ``size``
    where its batch is: the resized images are never all in memory, and the array is never copied whole. Resized in
    the process that holds the array (never sent to another: that would copy it)."""

    array: np.ndarray
    index: int
    size: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (3, self.size, self.size)


Sample = np.ndarray | Encoded | Pixels  # what a reader gives for one example: its array, the image to decode, or to resize
Row = tuple[Sample, int]  # a sample and its quarter turns (rotations)


def shape_of(sample: Sample) -> tuple[tuple[int, ...], np.dtype]:
    return (sample.shape, np.dtype(np.uint8)) if isinstance(sample, (Encoded, Pixels)) else (sample.shape, sample.dtype)


def rows_per_batch(sample_shape: tuple[int, ...], dtype: np.dtype) -> int:
    return max(1, ROW_GROUP_BYTES // (int(np.prod(sample_shape)) * dtype.itemsize))


def decoded(rows: list[Row]) -> np.ndarray:
    """The batch's samples as one array, each decoded (a zip opened once per batch) or resized, and turned."""
    from data.omniglot import decode, zip_member  # omniglot lists its images as ``Encoded``
    from data.published import colour

    archives: dict[str, zipfile.ZipFile] = {}
    files: dict[str, BinaryIO] = {}
    out = []
    try:
        for sample, turns in rows:
            if isinstance(sample, Pixels):
                sample = colour(sample.array[sample.index], sample.size)
            elif isinstance(sample, Encoded):
                source, raw = Path(sample.source), sample.raw
                if sample.span is not None:
                    if sample.source not in files:
                        files[sample.source] = open(source, "rb")
                    raw = read_span(files[sample.source], sample.span, sample.where)
                elif raw is None and source.is_dir():
                    raw = folder_file(source, source / sample.name)
                elif raw is None:
                    if sample.source not in archives:
                        archives[sample.source] = zipfile.ZipFile(source)
                    archive = archives[sample.source]
                    raw = zip_member(source, archive, archive.getinfo(sample.name))
                sample = decode(raw, sample.size, sample.where, invert=sample.invert, colour=sample.colour)
            out.append(np.rot90(sample, turns, axes=(-2, -1)) if turns else sample)
    finally:
        for archive in [*archives.values(), *files.values()]:
            archive.close()
    return np.ascontiguousarray(np.stack(out))


def check_readable(samples: list[Sample]) -> None:
    """Decode every sample, a batch at a time, for the error of the first one that is not a readable image."""
    step = rows_per_batch(*shape_of(samples[0])) if samples else 1
    for start in range(0, len(samples), step):
        decoded([(sample, 0) for sample in samples[start : start + step]])


def peak_rss() -> int:
    """This process's peak resident set so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def decode_plan(plan: bytes) -> tuple[bytes, str, int, int]:
    """One planned batch (pickled rows) decoded: its samples' bytes, or the one-line error of a sample that is not a
    readable image (which the driver raises as it is); with this worker's pid and peak memory."""
    try:
        pixels, error = decoded(pickle.loads(plan)).tobytes(), ""
    except DataError as e:
        pixels, error = b"", str(e)
    return pixels, error, os.getpid(), peak_rss()


def decode_block(batch: dict) -> dict:
    """Ray Data's map: ``decode_plan`` of the block's one batch."""
    pixels, error, pid, peak = decode_plan(batch["plan"][0])
    return {
        "index": batch["index"],
        "pixels": np.array([pixels], dtype=object),
        "error": np.array([error], dtype=object),
        "pid": np.array([pid]),
        "peak": np.array([peak]),
    }


@dataclass
class Stats:
    """What one preparation took: samples written, seconds, and the peak memory of this process and of each worker."""

    images: int = 0
    seconds: float = 0.0
    cpus: int = 0  # 0: decoded in this process
    driver_peak: int = 0
    worker_peaks: dict[int, int] | None = None

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def worker_peak(self) -> int:
        return max((self.worker_peaks or {}).values(), default=0)

    def summary(self) -> dict:
        return {
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 1),
            "cpus": self.cpus,
            "driver_peak_mib": round(self.driver_peak / MiB, 1),
            "worker_peak_mib": round(self.worker_peak / MiB, 1),
        }


class Split:
    """One split being written: its Parquet file, a row group per batch, and its ``.npy`` array, in row order."""

    def __init__(self, folder: Path, name: str, shape: tuple[int, ...], dtype: np.dtype):
        self.parquet_path, self.array_path = folder / f"{name}.parquet", folder / f"{name}.npy"
        self.shape, self.written = shape, 0
        self.sample_type = pa.list_(pa.from_numpy_dtype(dtype), int(np.prod(shape[2:])))
        schema = pa.schema([("class", pa.int32()), ("label", pa.string()), ("group", pa.string()), ("sample", self.sample_type)])
        # Dictionary-encoding mostly-zero pixels makes reads several times slower; lz4 alone keeps them fast.
        self.parquet = pq.ParquetWriter(self.parquet_path, schema, compression="lz4", use_dictionary=["label", "group"])
        self.array = open(self.array_path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
        np.lib.format.write_array_header_2_0(self.array, header)

    def append(self, classes: np.ndarray, labels: list[str], groups: list[str], samples: np.ndarray) -> None:
        flat = pa.array(samples.reshape(-1))
        columns = {
            "class": pa.array(classes, pa.int32()),
            "label": pa.array(labels, pa.string()),
            "group": pa.array(groups, pa.string()),
            "sample": pa.FixedSizeListArray.from_arrays(flat, self.sample_type.list_size),
        }
        self.parquet.write_table(pa.table(columns), row_group_size=len(samples))
        self.array.write(samples.tobytes())
        self.written += len(samples)

    def close(self) -> None:
        self.parquet.close()
        self.array.close()


@dataclass(frozen=True)
class Plan:
    """A split's rows in order: each class's samples (cut to the smallest class), then again at each quarter turn."""

    name: str
    rows: list[Row]
    labels: list[str]  # per class
    groups: list[str]  # per class
    shape: tuple[int, ...]  # (classes, samples, ...)
    dtype: np.dtype

    def batches(self) -> list[tuple[int, int]]:
        step = rows_per_batch(self.shape[2:], self.dtype)
        return [(start, min(start + step, len(self.rows))) for start in range(0, len(self.rows), step)]


def write(folder: Path, plans: list[Plan], cpus: int, memory_mb: int, connect: Callable[[], None] | None) -> Stats:
    """Every plan's split written to ``folder``; ``cpus``: 0 decodes here, N over N of the cluster's CPUs, -1 over all
    of them (``connect`` joins the cluster first)."""
    jobs = [(plan, start, stop) for plan in plans for start, stop in plan.batches()]
    images = sum(len(plan.rows) for plan in plans)  # samples written: images, or a table's rows of features
    stats, started, sampler = Stats(images=images, cpus=cpus), time.monotonic(), PeakSampler()
    progress = Progress(images)
    writers: dict[str, Split] = {}
    try:
        with sampler:
            if not cpus:
                batches = (decoded(plan.rows[start:stop]) for plan, start, stop in jobs)
            elif any(
                isinstance(sample, Encoded) and (sample.raw is not None or sample.span is not None) for plan in plans for sample, _ in plan.rows
            ):
                batches = fanned_out(jobs, cpus, memory_mb, connect, stats)
            else:
                batches = on_ray(jobs, cpus, memory_mb, connect, stats)
            for (plan, start, stop), samples in zip(jobs, batches, strict=True):
                if plan.name not in writers:
                    writers[plan.name] = Split(folder, plan.name, plan.shape, plan.dtype)
                per_class = plan.shape[1]
                index = np.arange(start, stop) // per_class
                writers[plan.name].append(index, [plan.labels[i] for i in index], [plan.groups[i] for i in index], samples)
                progress.advance(stop - start)
        progress.done()
    finally:
        for writer in writers.values():
            writer.close()
    stats.seconds, stats.driver_peak = time.monotonic() - started, sampler.peak
    return stats


def on_ray(jobs: list, cpus: int, memory_mb: int, connect: Callable[[], None] | None, stats: Stats) -> Iterator[np.ndarray]:
    """Each job's decoded batch, in job order, decoded by Ray Data over ``cpus`` CPUs, with at most ``memory_mb`` of
    batches in the object store at once (Ray Data's backpressure holds the rest back)."""
    import ray
    import ray.data
    from ray.data import DataContext, ExecutionResources

    cpus = joined(cpus, connect, stats)
    context = DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.execution_options.resource_limits, context.enable_progress_bars)
    context.execution_options.preserve_order = True  # batches come back in plan order, whatever finishes first
    context.execution_options.resource_limits = ExecutionResources(cpu=cpus, object_store_memory=memory_mb * MiB)
    context.enable_progress_bars = False  # ``Progress`` reports images, not Ray Data's blocks
    items = [{"index": i, "plan": pickle.dumps(plan.rows[start:stop])} for i, (plan, start, stop) in enumerate(jobs)]
    stats.worker_peaks = {}
    try:
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        decoded_blocks = dataset.map_batches(decode_block, batch_size=1, batch_format="numpy", compute=ray.data.TaskPoolStrategy(cpus), num_cpus=1)
        for expected, ((plan, start, stop), batch) in enumerate(
            zip(jobs, decoded_blocks.iter_batches(batch_size=1, batch_format="numpy"), strict=True)
        ):
            if int(batch["index"][0]) != expected:
                raise RuntimeError(f"Ray Data returned batch {batch['index'][0]} where batch {expected} was due")
            yield received(plan, stop - start, (batch["pixels"][0], batch["error"][0], int(batch["pid"][0]), int(batch["peak"][0])), stats)
    finally:
        context.execution_options.preserve_order, context.execution_options.resource_limits, context.enable_progress_bars = saved


def fanned_out(jobs: list, cpus: int, memory_mb: int, connect: Callable[[], None] | None, stats: Stats) -> Iterator[np.ndarray]:
    """Each job's decoded batch, in job order, for rows of a pickle or that carry their images' bytes: a Ray task
    per batch on at most ``cpus`` CPUs at once, each batch's rows sent as its task is submitted, and at most
    ``memory_mb`` of batches submitted ahead of the one written. Ray Data would put every batch's rows into the
    object store before decoding any (every batch's bytes, for rows that carry them)."""
    import ray

    cpus = joined(cpus, connect, stats)
    decode = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(decode_plan)
    ahead = max(cpus, memory_mb * MiB // (2 * ROW_GROUP_BYTES))  # a batch's bytes in and its samples out
    queue: deque = deque()  # (job, its task), in job order
    running: set = set()
    submitted, stats.worker_peaks = 0, {}
    try:
        while queue or submitted < len(jobs):
            while submitted < len(jobs) and len(running) < cpus and len(queue) < ahead:
                plan, start, stop = jobs[submitted]
                task = decode.remote(pickle.dumps(plan.rows[start:stop]))
                queue.append((jobs[submitted], task))
                running.add(task)
                submitted += 1
            (plan, start, stop), task = queue[0]
            if task in running:
                done, _ = ray.wait(list(running), num_returns=1)
                running.difference_update(done)
                continue
            queue.popleft()
            yield received(plan, stop - start, ray.get(task), stats)
    finally:
        for task in running:
            ray.cancel(task)


def joined(cpus: int, connect: Callable[[], None] | None, stats: Stats) -> int:
    """The CPUs to decode on, once on the cluster (``connect``): ``cpus``, or for -1 every CPU of the cluster."""
    import ray

    if connect is not None:
        connect()
    if cpus < 0:
        cpus = stats.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return cpus


def received(plan: Plan, rows: int, result: tuple[bytes, str, int, int], stats: Stats) -> np.ndarray:
    """A batch's samples from its ``decode_plan`` result, whose worker's peak memory is noted; its error raised."""
    pixels, error, pid, peak = result
    if error:
        raise DataError(error)
    stats.worker_peaks[pid] = max(stats.worker_peaks.get(pid, 0), peak)
    return np.frombuffer(pixels, plan.dtype).reshape(rows, *plan.shape[2:])


class PeakSampler:
    """This process's highest resident set while inside it, sampled every 20 ms (ru_maxrss counts the time before)."""

    def __init__(self):
        import psutil

        self.process, self.peak, self.stop = psutil.Process(), 0, threading.Event()

    def sample(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self):
        self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


class Progress:
    """A line on stderr every ``PROGRESS_S``: images done, per second, and the time left at that rate."""

    def __init__(self, total: int):
        self.total, self.done_count, self.started = total, 0, time.monotonic()
        self.last = self.started

    def advance(self, count: int) -> None:
        self.done_count += count
        now = time.monotonic()
        if now - self.last >= PROGRESS_S:
            self.last = now
            rate = self.done_count / (now - self.started)
            left = (self.total - self.done_count) / rate if rate else float("inf")
            print(f"prepare: {self.done_count:,}/{self.total:,} images, {rate:,.0f} images/s, ETA {left:,.0f}s", file=sys.stderr, flush=True)

    def done(self) -> None:
        seconds = time.monotonic() - self.started
        if seconds >= PROGRESS_S:
            print(f"prepare: {self.done_count:,} images in {seconds:,.0f}s, {self.done_count / seconds:,.0f} images/s", file=sys.stderr, flush=True)
