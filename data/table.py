"""A user's own few-shot problem: a Parquet or CSV table with a label column and images or numeric features."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from data.registry import Classes, DataConfig, DatasetSpec, classification_tasks, register_dataset, ways
from data.sources import DataError
from data.stream import Encoded

SUFFIXES = (".parquet", ".csv")


def read_file(path: Path, text_columns: list[str]) -> pa.Table:
    """The table; a CSV's ``text_columns`` (the label and group) are read as the text they hold, so ``7``, ``007``
    and ``7.0`` stay three classes instead of being parsed into one number. An empty cell there is a missing value."""
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: expected a .parquet or .csv table (data.name is table)")
    try:
        if path.suffix == ".parquet":
            return pq.read_table(path)
        table = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(column_types=dict.fromkeys(text_columns, pa.string())))
        for name in text_columns:
            if name in table.column_names:
                values = table[name]
                table = table.set_column(table.column_names.index(name), name, pc.if_else(pc.equal(values, ""), None, values))
        return table
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable {path.suffix[1:]} table ({str(e).splitlines()[0]})") from None


def column(table: pa.Table, path: Path, name: str, key: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise DataError(f"{path}: no column '{name}' ({key}); columns are {table.column_names}")
    return table[name]


def features(table: pa.Table, path: Path, names: list[str]) -> np.ndarray:
    """The feature columns as a (rows, features) float32 array; missing, NaN, infinite values and values beyond
    float32's range are errors (training on them diverges)."""
    out = []
    for name in names:
        values = column(table, path, name, "data.features")
        if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
            raise DataError(f"{path}: feature column '{name}' must be numeric, got {values.type}")
        given = values.to_numpy()
        missing = np.flatnonzero(np.isnan(given)) if given.dtype.kind == "f" else []
        if len(missing):
            raise DataError(f"{path}: feature column '{name}' has a missing or NaN value in row {missing[0]}")
        with np.errstate(over="ignore"):
            array = given.astype(np.float32)
        beyond = np.flatnonzero(~np.isfinite(array))
        if beyond.size:
            row = beyond[0]
            raise DataError(
                f"{path}: feature column '{name}' has {float(given[row]):g} in row {row}; features must be finite float32 values (|x| < 3.4e38)"
            )
        out.append(array)
    return np.stack(out, axis=1)


def images(table: pa.Table, path: Path, name: str, size: int) -> list[Encoded]:
    """The image column's images, still encoded (decoded in batches as their split is written)."""
    values = column(table, path, name, "data.image_column")
    if not (pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type)):
        raise DataError(f"{path}: image column '{name}' must hold encoded image bytes, got {values.type}")
    if values.null_count:
        raise DataError(f"{path}: image column '{name}' has a missing value in row {values.is_null().index(True).as_py()}")
    return [Encoded(str(path), f"row {row} column '{name}'", size, raw=raw) for row, raw in enumerate(values.to_pylist())]


def read(path: Path, data: DataConfig) -> Classes:
    """Rows grouped into classes keyed by (group, label); the group is '' without a group column."""
    table = read_file(path, [data.label_column, *([data.group_column] if data.group_column else [])])
    labels = column(table, path, data.label_column, "data.label_column")
    if labels.null_count:
        raise DataError(f"{path}: label column '{data.label_column}' has missing values")
    groups = column(table, path, data.group_column, "data.group_column") if data.group_column else None
    if groups is not None and groups.null_count:
        raise DataError(f"{path}: group column '{data.group_column}' has missing values")
    rows = features(table, path, list(data.features)) if data.features else images(table, path, data.image_column, data.image_size)
    keys = zip(
        pc.cast(groups, pa.string()).to_pylist() if groups is not None else [""] * len(table),
        pc.cast(labels, pa.string()).to_pylist(),
        strict=True,
    )
    classes: Classes = {}
    for key, row in zip(keys, rows, strict=True):
        classes.setdefault(key, []).append(row)
    if not classes:
        raise DataError(f"{path}: the table has no rows")
    return classes


def check(data: DataConfig) -> str | None:
    if data.features and data.rotations:
        return "config key 'data.rotations': only images can be rotated, data.features is set"
    return None


register_dataset(
    DatasetSpec(
        "table",
        "classification",
        "a user's own few-shot problem: one row per example, with images or numeric features",
        tasks=classification_tasks,
        outputs=ways,
        example=lambda data: ("vectors", (len(data.features),)) if data.features else ("images", (data.image_size, data.image_size)),
        default_model=lambda data: "mlp" if data.features else "conv4",
        read=read,
        check=check,
        sources="a .parquet or .csv table (data/README.md), or a list of them",
    )
)
