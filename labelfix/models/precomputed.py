"""Probabilities the user already has: a .npy/.csv/.parquet file or a column of the dataset."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labelfix.errors import ProbabilitiesError
from labelfix.events import Event, EventCallback, ignore

if TYPE_CHECKING:
    import pyarrow as pa

# Rows may drift this far from summing to 1 and still be renormalised; beyond it they are refused.
SUM_TOLERANCE = 1e-3
# Below this, a row sum counts as exactly 1 (float32 rounding) and nothing is said.
SILENT_DRIFT = 1e-5


def read_probs_file(path: str | Path) -> np.ndarray:
    """Read an N x K matrix from .npy, .csv (with or without a header row) or .parquet.

    Returns:
        (N, K) float32 as stored (not yet validated).

    Raises:
        ProbabilitiesError: the file does not exist, has an unknown suffix or cannot be parsed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ProbabilitiesError(f"--probs {path} does not exist; check the path")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            matrix = np.load(path, allow_pickle=False)
        elif suffix in {".csv", ".tsv"}:
            matrix = _read_csv_matrix(path, "\t" if suffix == ".tsv" else ",")
        elif suffix in {".parquet", ".pq"}:
            import pyarrow.parquet as pq

            matrix = matrix_from_table(pq.read_table(path), str(path))
        else:
            raise ProbabilitiesError(
                f"--probs {path}: unknown file type {suffix or '(none)'}; "
                "use .npy, .csv or .parquet"
            )
    except (ValueError, OSError) as exc:
        raise ProbabilitiesError(f"cannot read --probs {path}: {_first_line(exc)}") from None
    return _as_float_matrix(matrix, str(path))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_csv_matrix(path: Path, delimiter: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with path.open("rb") as handle:
        first = handle.readline().decode("utf-8", errors="replace").strip().split(delimiter)
    has_header = any(not _is_number(cell) for cell in first)
    read_options = pacsv.ReadOptions(autogenerate_column_names=not has_header)
    parse_options = pacsv.ParseOptions(delimiter=delimiter)
    try:
        table = pacsv.read_csv(path, read_options=read_options, parse_options=parse_options)
    except pa.ArrowInvalid as exc:
        raise ValueError(str(exc)) from None
    return matrix_from_table(table, str(path))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def matrix_from_table(table: pa.Table, where: str) -> np.ndarray:
    """An Arrow table of K numeric columns, or of one list column, as an N x K matrix."""
    import pyarrow as pa

    if table.num_columns == 1 and _is_list(table.schema.field(0).type):
        return list_column_matrix(table.column(0), where)
    for field in table.schema:
        if not (pa.types.is_floating(field.type) or pa.types.is_integer(field.type)):
            raise ProbabilitiesError(
                f"{where}: column {field.name!r} is {field.type}, not a number; probabilities "
                "must be K numeric columns or one list column"
            )
    return np.column_stack([
        table.column(i).to_numpy().astype(np.float64, copy=False) for i in range(table.num_columns)
    ]) if table.num_columns else np.empty((table.num_rows, 0))


def _is_list(data_type: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_list(data_type) or pa.types.is_large_list(data_type)
                or pa.types.is_fixed_size_list(data_type))


def list_column_matrix(column: pa.ChunkedArray | pa.Array, where: str) -> np.ndarray:
    """A column whose every value is a list of K numbers, as an N x K matrix.

    Raises:
        ProbabilitiesError: the column is not a list column, has missing rows or ragged rows.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not _is_list(array.type):
        raise ProbabilitiesError(f"{where} holds {array.type}, not lists of probabilities; "
                                 "each row must be a list of K numbers")
    if array.null_count:
        row = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise ProbabilitiesError(f"{where} is missing in row {row}; every row needs K numbers")
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise ProbabilitiesError(f"{where}: row {row} has {lengths[row]} values, row 0 has "
                                 f"{lengths[0]}; every row needs the same K numbers")
    width = int(lengths[0]) if len(lengths) else 0
    values = pc.list_flatten(array).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return values.reshape(len(array), width)


def _as_float_matrix(matrix: np.ndarray, where: str) -> np.ndarray:
    if matrix.dtype == object or not np.issubdtype(matrix.dtype, np.number):
        raise ProbabilitiesError(f"{where} holds {matrix.dtype} values, not numbers")
    if matrix.ndim != 2:
        raise ProbabilitiesError(f"{where} has shape {matrix.shape}; probabilities must be a "
                                 "2-D matrix of N rows (one per example) and K columns")
    return matrix


def validate(
    matrix: np.ndarray, *, n_rows: int, label_names: tuple[str, ...] | list[str], where: str,
    on_event: EventCallback = ignore,
) -> np.ndarray:
    """Check an N x K probability matrix against the data and return it as float32.

    Rows that sum to 1 within ``SUM_TOLERANCE`` are renormalised (with a warning when the drift
    is visible); larger drift is refused rather than silently rescaled.

    Returns:
        (N, K) float32, C-contiguous, rows summing to 1.

    Raises:
        ProbabilitiesError: wrong shape, NaN or infinite values, negative values, rows that
            do not sum to 1.
    """
    k = len(label_names)
    if matrix.shape != (n_rows, k):
        raise ProbabilitiesError(
            f"{where} has shape {matrix.shape[0]} x {matrix.shape[1] if matrix.ndim > 1 else 1} "
            f"but the data has {n_rows} rows and {k} classes ({','.join(label_names)}); "
            "pass probabilities with one row per example and one column per class, in that order"
        )
    # One pass for the sums: a NaN or infinity makes its row's sum non-finite, so the full
    # element-wise checks run only when something is wrong.
    sums = matrix.sum(axis=1, dtype=np.float64)
    if not np.isfinite(sums).all():
        row = int(np.flatnonzero(~np.isfinite(sums))[0])
        raise ProbabilitiesError(f"{where} holds NaN or infinite values (first in row {row}); "
                                 "recompute the probabilities")
    if matrix.min() < 0:
        row = int(np.flatnonzero((matrix < 0).any(axis=1))[0])
        raise ProbabilitiesError(f"{where} holds negative values (first in row {row}); "
                                 "pass probabilities, not logits (apply softmax first)")
    drift = np.abs(sums - 1.0)
    worst = float(drift.max()) if len(drift) else 0.0
    if worst > SUM_TOLERANCE:
        row = int(np.argmax(drift))
        raise ProbabilitiesError(
            f"{where}: row {row} sums to {sums[row]:.6g}, not 1 (tolerance {SUM_TOLERANCE:g}); "
            "pass probabilities, not logits or scores (apply softmax first)"
        )
    out = np.ascontiguousarray(matrix, dtype=np.float32)
    if worst > SILENT_DRIFT:
        count = int((drift > SILENT_DRIFT).sum())
        on_event(Event("warning", message=(
            f"{count} row(s) of {where} summed to 1 only within {worst:.2g}; renormalised them"
        )))
        out = out / out.sum(axis=1, keepdims=True, dtype=np.float32)
    return out


def content_key(matrix: np.ndarray) -> str:
    """A hash of the matrix's values, so that the same file scanned twice is stored once."""
    import xxhash

    digest = xxhash.xxh3_128()
    digest.update(str(matrix.shape).encode())
    digest.update(np.ascontiguousarray(matrix, dtype="<f4").data)
    return f"probs:{digest.hexdigest()}"
