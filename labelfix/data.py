"""Dataset sources -> one in-memory view: texts, labels, label names, fingerprint.

A source is a Hugging Face dataset id, a ``save_to_disk`` folder, a .csv/.tsv/.jsonl/.parquet
file, or ``demo`` (the AG News test split shipped with labelfix). Everything is validated here,
before anything is written anywhere, so that bad input fails with one clear message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labelfix.errors import DataError, WorkError

if TYPE_CHECKING:
    import pyarrow as pa

DEMO = "demo"
DEMO_NAME = "ag_news"
DEMO_LABELS = ("World", "Sports", "Business", "Sci/Tech")
FILE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl",
                 ".parquet": "parquet", ".pq": "parquet"}
TEXT_COLUMN_GUESSES = ("text", "sentence", "content", "review", "document", "question")
LABEL_COLUMN_GUESSES = ("label", "labels", "class", "target", "category", "y")


@dataclass(frozen=True)
class SourceSpec:
    """What the user asked to load (``labelfix scan SOURCE`` and its options)."""

    source: str
    split: str | None = None
    config: str | None = None
    text_columns: tuple[str, ...] = ()
    label_column: str | None = None
    labels: tuple[str, ...] | None = None
    probs_column: str | None = None


@dataclass(frozen=True)
class DataView:
    """The rows labelfix works on.

    ``texts`` holds one pyarrow string array per text column (two for sentence pairs), each of
    length N; ``labels`` is ``(N,) int64`` with values in ``range(len(label_names))``.
    """

    name: str
    source: str
    source_kind: str
    split: str | None
    config: str | None
    text_columns: tuple[str, ...]
    label_column: str
    label_names: tuple[str, ...]
    texts: tuple[pa.Array, ...]
    labels: np.ndarray
    fingerprint: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def n_rows(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    def text(self, row: int) -> str:
        return str(self.texts[0][row].as_py())

    def text_pair(self, row: int) -> str | None:
        return str(self.texts[1][row].as_py()) if len(self.texts) > 1 else None

    def text_lists(self) -> tuple[list[str], list[str] | None]:
        """The texts as Python lists (first column, second column or None)."""
        first = self.texts[0].to_pylist()
        second = self.texts[1].to_pylist() if len(self.texts) > 1 else None
        return first, second


def text_hash(text: str, pair: str | None = None) -> str:
    """The hash that identifies a row's text (and its pair) across versions."""
    digest = hashlib.sha256(text.encode("utf-8"))
    if pair is not None:
        digest.update(b"\x00")
        digest.update(pair.encode("utf-8"))
    return digest.hexdigest()


def default_name(spec: SourceSpec) -> str:
    """The dataset name used when ``--name`` is not given."""
    if spec.source == DEMO:
        return DEMO_NAME
    path = Path(spec.source)
    if path.suffix.lower() in FILE_SUFFIXES:
        return path.stem
    if path.exists():
        return path.resolve().name
    name = spec.source.rstrip("/").split("/")[-1]
    return f"{name}_{spec.config}" if spec.config else name


def load(spec: SourceSpec, *, name: str | None = None, keep_table: bool = False) -> DataView:
    """Load and validate the rows of a source.

    With ``keep_table`` the whole source table (every column) is kept in
    ``extra["table"]``, for writing a new version of it.

    Raises:
        DataError: the source does not exist, lacks a named column, or holds data that cannot
            be scanned (no rows, one class, empty texts, labels outside the label names).
        WorkError: a Hugging Face dataset could not be downloaded.
    """
    import pyarrow as pa

    table, kind, label_names = _read(spec)
    if table.num_rows == 0:
        raise DataError(f"{spec.source} has no rows; scan a dataset with at least two classes")
    text_columns, label_column = _pick_columns(spec, table, kind)
    texts = tuple(_text_array(table, column, spec.source) for column in text_columns)
    if label_names is None:
        label_names = _class_names(table, label_column)
    labels, names = _encode_labels(
        table.column(label_column), label_column, spec.labels, label_names, spec.source
    )
    extra: dict[str, Any] = {}
    label_type = table.column(label_column).type
    if spec.labels is None and label_names is None and (
            pa.types.is_integer(label_type) or pa.types.is_floating(label_type)):
        # Classes are the sorted label values: remember them to write labels back as values.
        extra["integer_values"] = np.array([int(n) for n in names], dtype=np.int64)
    if keep_table:
        extra["table"] = table
    if spec.probs_column is not None:
        if spec.probs_column not in table.column_names:
            raise DataError(
                _missing_column(spec.probs_column, "--probs-column", table, spec.source))
        extra["probs_column"] = table.column(spec.probs_column)
        extra["probs_column_name"] = spec.probs_column
    return DataView(
        name=name or default_name(spec),
        source=_canonical_source(spec.source, kind),
        source_kind=kind,
        split=spec.split,
        config=spec.config,
        text_columns=tuple(text_columns),
        label_column=label_column,
        label_names=tuple(names),
        texts=texts,
        labels=labels,
        fingerprint=fingerprint(texts, labels, names),
        extra=extra,
    )


def fingerprint(texts: Sequence[pa.Array], labels: np.ndarray, label_names: Sequence[str]) -> str:
    """A hash of every text, every label and the label names: it changes when any of them does.

    Hashes Arrow's buffers (xxh3-128) rather than Python strings: a million rows take a few
    hundredths of a second. It identifies data, it does not authenticate it.
    """
    import pyarrow as pa
    import xxhash

    digest = xxhash.xxh3_128()
    digest.update(json.dumps(list(label_names)).encode("utf-8"))
    digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    for array in texts:
        array = array.cast(pa.large_string())
        _validity, offsets_buf, data_buf = array.buffers()
        start = array.offset
        offsets = np.frombuffer(offsets_buf, dtype="<i8")[start : start + len(array) + 1]
        digest.update(b"\x01column")
        digest.update((offsets - offsets[0]).tobytes())
        digest.update(memoryview(data_buf)[offsets[0] : offsets[-1]])
    return digest.hexdigest()


def _canonical_source(source: str, kind: str) -> str:
    if kind in {"csv", "tsv", "jsonl", "parquet", "disk"}:
        return str(Path(source).expanduser().resolve())
    return source


def _read(spec: SourceSpec) -> tuple[pa.Table, str, list[str] | None]:
    """The source as an Arrow table, its kind, and label names found in its features."""
    source = spec.source
    if source == DEMO:
        return _read_demo(), "demo", list(DEMO_LABELS)
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix in FILE_SUFFIXES:
        if not path.is_file():
            raise DataError(f"{source} does not exist; check the path")
        return _read_file(path, FILE_SUFFIXES[suffix]), FILE_SUFFIXES[suffix], None
    if path.is_dir() and _is_saved_dataset(path):
        return _read_saved(path, spec)
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        if path.is_dir():
            return _read_hub(str(path), spec)
        raise DataError(
            f"{source} does not exist or is not a dataset; pass a .csv/.tsv/.jsonl/.parquet file, "
            "a save_to_disk folder, a Hugging Face dataset id, or 'demo'"
        )
    return _read_hub(source, spec)


def _read_demo() -> pa.Table:
    import pyarrow.parquet as pq

    with resources.as_file(resources.files("labelfix.demo") / "ag_news_test.parquet") as path:
        return pq.read_table(path)


def _read_file(path: Path, kind: str) -> pa.Table:
    import pyarrow as pa
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    try:
        if kind in ("csv", "tsv"):
            return _read_delimited(path, "," if kind == "csv" else "\t")
        if kind == "jsonl":
            return pajson.read_json(path, read_options=pajson.ReadOptions(block_size=16 << 20))
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {path} as {kind}: {detail}; check the file") from None


def _read_delimited(path: Path, delimiter: str) -> pa.Table:
    """CSV/TSV, parsed in parallel blocks; quoted newlines inside values need a slower
    parser, used only when the file turns out to have them."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    read_options = pacsv.ReadOptions(block_size=16 << 20)
    try:
        return pacsv.read_csv(path, read_options=read_options,
                              parse_options=pacsv.ParseOptions(delimiter=delimiter))
    except pa.ArrowInvalid:
        return pacsv.read_csv(path, read_options=read_options, parse_options=pacsv.ParseOptions(
            delimiter=delimiter, newlines_in_values=True))


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def quiet_datasets() -> None:
    """Stop the datasets library drawing its own progress bars: labelfix reports progress
    through events, and the core never prints."""
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def _read_saved(path: Path, spec: SourceSpec) -> tuple[pa.Table, str, list[str] | None]:
    from datasets import DatasetDict, load_from_disk

    quiet_datasets()
    try:
        loaded = load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(f"cannot load the saved dataset {path}: {exc}") from None
    if isinstance(loaded, DatasetDict):
        loaded = _choose_split(loaded, spec.split, str(path))
    elif spec.split is not None:
        raise DataError(f"{path} holds a single split; drop --split {spec.split}")
    return _from_hf(loaded), "disk", None


def _choose_split(dataset_dict: Any, split: str | None, source: str) -> Any:
    names = list(dataset_dict.keys())
    if split is None:
        if len(names) == 1:
            return dataset_dict[names[0]]
        raise DataError(f"{source} has splits {', '.join(names)}; choose one with --split")
    if split not in dataset_dict:
        raise DataError(f"{source} has no split {split!r}; it has {', '.join(names)}")
    return dataset_dict[split]


def _read_hub(source: str, spec: SourceSpec) -> tuple[pa.Table, str, list[str] | None]:
    from datasets import DatasetDict, load_dataset

    quiet_datasets()
    try:
        loaded = load_dataset(source, spec.config)
    except FileNotFoundError as exc:
        raise DataError(f"cannot find dataset {source!r}: {_first_line(exc)}; pass a file, a "
                        "save_to_disk folder, a Hugging Face dataset id or 'demo'") from None
    except ValueError as exc:
        raise DataError(f"cannot load dataset {source!r}: {_first_line(exc)}") from None
    except (ConnectionError, OSError) as exc:
        raise WorkError(f"cannot download dataset {source!r} from the Hugging Face hub: "
                        f"{_first_line(exc)}; check the network or pass a local copy") from None
    except Exception as exc:  # datasets wraps hub failures in many private exception types
        raise WorkError(f"cannot load dataset {source!r}: {_first_line(exc)}; check the id and "
                        "the network, or pass a local copy (save_to_disk folder or file)") from None
    if isinstance(loaded, DatasetDict):
        loaded = _choose_split(loaded, spec.split, source)
    return _from_hf(loaded), "hub", None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _from_hf(dataset: Any) -> pa.Table:
    """The Arrow table of a ``datasets.Dataset``, with ClassLabel names kept as metadata."""
    import pyarrow as pa
    from datasets import ClassLabel

    table = dataset.with_format("arrow")[:]
    if not isinstance(table, pa.Table):
        table = pa.table(table)
    names = {
        column: feature.names
        for column, feature in dataset.features.items()
        if isinstance(feature, ClassLabel)
    }
    version = dataset.info.version
    return table.replace_schema_metadata({
        b"labelfix.class_names": json.dumps(names).encode(),
        # Kept so that an exported version carries the source's features and version on.
        b"labelfix.features": json.dumps(dataset.features.to_dict()).encode(),
        b"labelfix.info_version": str(version or "").encode(),
    })


def hf_features(table: pa.Table) -> dict[str, Any] | None:
    """The Hugging Face features a table was loaded with, as ``Features.to_dict()``, if any."""
    raw = (table.schema.metadata or {}).get(b"labelfix.features")
    return json.loads(raw) if raw else None


def hf_version(table: pa.Table) -> str | None:
    raw = (table.schema.metadata or {}).get(b"labelfix.info_version")
    return raw.decode() if raw else None


def _class_names(table: pa.Table, column: str) -> list[str] | None:
    metadata = table.schema.metadata or {}
    raw = metadata.get(b"labelfix.class_names")
    if raw:
        names = json.loads(raw).get(column)
        return list(names) if names else None
    return None


def _pick_columns(spec: SourceSpec, table: pa.Table, kind: str) -> tuple[list[str], str]:
    columns = table.column_names
    if spec.text_columns:
        if len(spec.text_columns) > 2:
            raise DataError("--text-column takes one column, or two for sentence pairs; "
                            f"got {len(spec.text_columns)}")
        for column in spec.text_columns:
            if column not in columns:
                raise DataError(_missing_column(column, "--text-column", table, spec.source))
        text_columns = list(spec.text_columns)
    else:
        guess = next((c for c in TEXT_COLUMN_GUESSES if c in columns), None)
        if guess is None:
            raise DataError(f"{spec.source} has no column named text; choose one with "
                            f"--text-column (columns: {', '.join(columns)})")
        text_columns = [guess]
    if spec.label_column is not None:
        if spec.label_column not in columns:
            raise DataError(
                _missing_column(spec.label_column, "--label-column", table, spec.source))
        label_column = spec.label_column
    else:
        guess = next((c for c in LABEL_COLUMN_GUESSES if c in columns), None)
        if guess is None:
            raise DataError(f"{spec.source} has no column named label; choose one with "
                            f"--label-column (columns: {', '.join(columns)})")
        label_column = guess
    if label_column in text_columns:
        raise DataError(f"column {label_column!r} cannot be both the text and the label column")
    return text_columns, label_column


def _missing_column(column: str, option: str, table: pa.Table, source: str) -> str:
    return (f"{option} {column!r}: {source} has no such column; "
            f"its columns are {', '.join(table.column_names)}")


def _text_array(table: pa.Table, column: str, source: str) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    array = table.column(column).combine_chunks()
    if pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
        array = _decode_utf8(array, f"text column {column!r} of {source}")
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        if pa.types.is_null(array.type):
            raise DataError(f"text column {column!r} of {source} is empty in every row; "
                            "fill in the texts or choose another --text-column")
        if pa.types.is_integer(array.type) or pa.types.is_floating(array.type):
            raise DataError(f"text column {column!r} of {source} holds numbers, not text; "
                            "choose the text column with --text-column")
        array = array.cast(pa.string())
    # A whitespace-only text gives the model nothing to judge, so it is as bad as a missing one.
    blank = pc.or_kleene(pc.is_null(array), pc.equal(pc.utf8_trim_whitespace(array), ""))
    blank = pc.fill_null(blank, True)
    if pc.any(blank).as_py():
        rows = np.flatnonzero(blank.to_numpy(zero_copy_only=False))
        shown = ", ".join(str(r) for r in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        raise DataError(f"text column {column!r} is empty or missing in {len(rows)} row(s): "
                        f"{shown}{more} (0-based); fill them in or drop those rows")
    return array


def _decode_utf8(array: pa.Array, what: str) -> pa.Array:
    """Bytes that a reader could not decode (pyarrow keeps them as binary) as text, or a
    DataError saying the file is not UTF-8."""
    import pyarrow as pa

    try:
        return array.cast(pa.string())
    except pa.ArrowInvalid:
        raise DataError(f"{what} is not UTF-8 text; re-save the file as UTF-8") from None


def _encode_labels(
    column: pa.ChunkedArray,
    name: str,
    given_names: tuple[str, ...] | None,
    class_names: list[str] | None,
    source: str,
) -> tuple[np.ndarray, list[str]]:
    """Labels as ``(N,) int64`` codes and their names, in the order the user expects."""
    import pyarrow as pa

    array = column.combine_chunks()
    if pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
        array = _decode_utf8(array, f"label column {name!r} of {source}")
    if array.null_count:
        rows = np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))
        raise DataError(f"label column {name!r} is missing in {len(rows)} row(s): "
                        f"{', '.join(map(str, rows[:5]))} (0-based); fill them in or drop them")
    if given_names is not None:
        if len(set(given_names)) != len(given_names):
            raise DataError(f"--labels names a class twice: {','.join(given_names)}")
        if any(not n.strip() for n in given_names):
            raise DataError("--labels has an empty name; give names like World,Sports,Business")
    if pa.types.is_integer(array.type) or pa.types.is_boolean(array.type):
        codes = array.cast(pa.int64()).to_numpy()
        names = list(given_names) if given_names is not None else class_names
        if names is None:
            # Integer labels with no names: their sorted values become the classes.
            values = np.unique(codes)
            codes = np.searchsorted(values, codes).astype(np.int64)
            names = [str(v) for v in values.tolist()]
        else:
            bad = (codes < 0) | (codes >= len(names))
            if bad.any():
                rows = np.flatnonzero(bad)
                raise DataError(
                    f"label column {name!r} holds {sorted(set(codes[rows].tolist()))[:5]} "
                    f"(first at row {rows[0]}) but the {len(names)} label names "
                    f"{','.join(names)} only cover 0..{len(names) - 1}; "
                    "fix --labels or the labels"
                )
    elif pa.types.is_string(array.type) or pa.types.is_large_string(array.type) or \
            pa.types.is_dictionary(array.type):
        # Work on the K distinct values, not the N rows: encode once, trim the dictionary.
        encoded = array if pa.types.is_dictionary(array.type) else array.dictionary_encode()
        values = [("" if v is None else str(v)).strip()
                  for v in encoded.dictionary.to_pylist()]
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        blank_values = np.array([v == "" for v in values], dtype=bool)
        if blank_values.any() and blank_values[indices].any():
            rows = np.flatnonzero(blank_values[indices])
            raise DataError(f"label column {name!r} is missing in {len(rows)} row(s): "
                            f"{', '.join(map(str, rows[:5]))} (0-based); fill them in or drop them")
        used = np.unique(indices)
        present = sorted({values[i] for i in used.tolist()})
        names = list(given_names) if given_names is not None else present
        unknown = sorted(set(present) - set(names))
        if unknown:
            raise DataError(
                f"label column {name!r} holds {len(unknown)} label(s) not among the label names "
                f"{','.join(names)}: {', '.join(unknown[:5])}; add them to --labels"
            )
        position = {n: k for k, n in enumerate(names)}
        lookup = np.array([position.get(v, -1) for v in values], dtype=np.int64)
        codes = lookup[indices]
    elif pa.types.is_floating(array.type):
        values = array.to_numpy(zero_copy_only=False)
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise DataError(f"label column {name!r} holds fractional numbers; labels must be "
                            "class names or whole class numbers")
        return _encode_labels(pa.chunked_array([array.cast(pa.int64())]), name, given_names,
                              class_names, source)
    else:
        raise DataError(f"label column {name!r} has type {array.type}; labels must be class names "
                        "or whole class numbers (choose another --label-column)")
    present_classes = np.unique(codes)
    if len(present_classes) < 2:
        only = names[int(present_classes[0])] if len(present_classes) else "none"
        raise DataError(f"every row of {source} has the same label ({only}); finding label errors "
                        "needs at least two classes")
    return codes, names
