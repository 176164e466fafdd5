"""The export use case: the source data with every correction applied, as a new version.

A version is rebuilt from version 0's source (checked against the fingerprint recorded at scan
time) plus every correction so far, so it never depends on an earlier export still being on
disk. It is written to a hidden folder beside ``out`` and renamed into place in the same
transaction that records it: a crash leaves neither a partial folder nor a version on record.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from labelfix import __version__
from labelfix._hooks import checkpoint
from labelfix.data import (
    DEMO,
    DataView,
    SourceSpec,
    fingerprint,
    hf_features,
    hf_version,
    load,
    quiet_datasets,
)
from labelfix.data import text_hash as hash_text
from labelfix.errors import UsageError, WorkError
from labelfix.events import Event, EventCallback, Task, ignore
from labelfix.store import Store
from labelfix.store.locking import lock_dataset
from labelfix.store.models import (
    Annotation,
    Audit,
    Correction,
    Dataset,
    DatasetVersion,
    utcnow,
)
from labelfix.sync import resolve_dataset

FORMATS = ("arrow", "parquet", "csv", "jsonl")
DATA_FILES = {"parquet": "data.parquet", "csv": "data.csv", "jsonl": "data.jsonl"}


@dataclass(frozen=True)
class ExportResult:
    dataset: str
    version: int
    path: str | None
    rows: int
    corrections_applied: int
    discarded_dropped: int
    semver: str | None
    nothing_new: bool = False


def run_export(
    store: Store,
    dataset: str | None,
    *,
    out: Path,
    fmt: str = "arrow",
    drop_discarded: bool = False,
    on_event: EventCallback = ignore,
) -> ExportResult:
    """Write the next version of ``dataset`` to ``out``.

    Raises:
        UsageError: an unknown format, or ``out`` exists.
        WorkError: the source changed since it was scanned, or a corrected row's text differs.
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    out = out.expanduser().resolve()
    if not out.parent.is_dir():
        raise UsageError(f"folder {out.parent} does not exist; create it or choose another --out")
    with store.session() as session:
        found = resolve_dataset(session, dataset)
        plan = _plan(session, found, drop_discarded=drop_discarded)
    # Hidden folders left by an export killed while writing: never a version, safe to remove.
    for stale in out.parent.glob(f".{out.name}.labelfix-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if out.exists():
        adopted = _adopt(store, out, plan, drop_discarded=drop_discarded, on_event=on_event)
        if adopted is not None:
            return adopted
        raise UsageError(f"{out} exists; labelfix never overwrites a version, choose a new --out")
    if plan["new_corrections"] == 0 and plan["new_drops"] == 0:
        on_event(Event("info", message=(
            f"No corrections since version {plan['latest_version']} of {plan['name']}; "
            "nothing written"
        )))
        return ExportResult(dataset=plan["name"], version=plan["latest_version"], path=None,
                            rows=plan["latest_rows"], corrections_applied=0,
                            discarded_dropped=0, semver=None, nothing_new=True)
    with Task(on_event, "Loading the source data", total=None):
        view = load(plan["spec"], name=plan["name"], keep_table=True)
    if view.fingerprint != plan["fingerprint0"]:
        raise WorkError(
            f"the source of {plan['name']} changed since it was scanned (fingerprint "
            f"{plan['fingerprint0'][:12]} recorded, {view.fingerprint[:12]} now); restore the "
            "scanned data or scan the new data under another --name"
        )
    labels = _corrected_labels(view, plan["rows"], plan["new_labels"], plan["hashes"])
    keep = np.ones(view.n_rows, dtype=bool)
    if drop_discarded and len(plan["discarded"]):
        keep[plan["discarded"]] = False
    table = _output_table(view, labels, keep)
    version_number = plan["latest_version"] + 1
    semver = _semver(hf_version(view.extra["table"]), version_number)
    new_fingerprint = fingerprint(
        tuple(t.filter(keep) for t in view.texts) if not keep.all() else view.texts,
        labels[keep], view.label_names,
    )
    output = _Output(table=table, view=view, semver=semver, fingerprint=new_fingerprint)
    temporary = out.parent / f".{out.name}.labelfix-{uuid.uuid4().hex[:8]}"
    try:
        with Task(on_event, f"Writing {fmt}", total=None):
            _write(output, temporary, fmt)
        checkpoint("export.written")
        with store.session() as session:
            version = _record(session, plan, view=view, out=out, fmt=fmt, keep=keep,
                              labels=labels, new_fingerprint=new_fingerprint,
                              version_number=version_number)
            _write_changelog(session, temporary, dataset_id=plan["dataset_id"], view=view,
                             version_number=version_number, dropped=plan["discarded"]
                             if drop_discarded else np.empty(0, dtype=np.int64),
                             standing=plan["standing"])
            _write_manifest(temporary, plan=plan, view=view, version=version, semver=semver,
                            fmt=fmt, rows=int(keep.sum()), new_fingerprint=new_fingerprint)
            session.flush()
            # The rename is the last step inside the transaction: if it fails, nothing is
            # recorded; if the commit fails after it, the folder is moved back out below.
            os.rename(temporary, out)
            checkpoint("export.renamed")
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        if out.exists() and not _recorded(store, out):
            shutil.rmtree(out, ignore_errors=True)
        raise
    return ExportResult(dataset=plan["name"], version=version_number, path=str(out),
                        rows=int(keep.sum()), corrections_applied=plan["new_corrections"],
                        discarded_dropped=int((~keep).sum()), semver=semver)


def _adopt(store: Store, out: Path, plan: dict[str, Any], *, drop_discarded: bool,
           on_event: EventCallback) -> ExportResult | None:
    """Record a version that an export killed between its rename and its commit left complete
    on disk, instead of refusing the rerun. Anything else in ``out`` is left alone (None)."""
    manifest_path = out / "labelfix.json"
    if not manifest_path.is_file() or _recorded(store, out):
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    expected_version = plan["latest_version"] + 1
    if (manifest.get("dataset"), manifest.get("version"), manifest.get("parent_version"),
            manifest.get("source_fingerprint")) != (
            plan["name"], expected_version, plan["latest_version"], plan["fingerprint0"]):
        return None
    if manifest.get("corrections_applied") != plan["new_corrections"]:
        return None  # verdicts arrived since: that folder is not this export
    with store.session() as session:
        rows = int(manifest["rows"])
        keep_map = None
        if drop_discarded and manifest.get("discarded_dropped"):
            kept = np.setdiff1d(np.arange(plan["rows0"]), plan["discarded"])
            keep_map = kept.astype("<i8").tobytes()
        version = DatasetVersion(
            dataset_id=plan["dataset_id"], version=expected_version,
            fingerprint=manifest["fingerprint"], row_count=rows, parent_id=plan["latest_id"],
            location=str(out), format=manifest.get("format"),
            corrections_applied=plan["new_corrections"],
            # The labels are in the folder; reading them back is not worth a reload here.
            discarded_dropped=int(manifest.get("discarded_dropped") or 0), row_map=keep_map,
        )
        session.add(version)
        session.flush()
        for correction in session.scalars(select(Correction).where(
                Correction.dataset_id == plan["dataset_id"], Correction.version_id.is_(None))):
            correction.version_id = version.id
    on_event(Event("info", message=(
        f"{out} holds version {expected_version} of {plan['name']}, written by an export that "
        "stopped before recording it; recorded it now"
    )))
    return ExportResult(dataset=plan["name"], version=expected_version, path=str(out),
                        rows=rows, corrections_applied=plan["new_corrections"],
                        discarded_dropped=int(manifest.get("discarded_dropped") or 0),
                        semver=manifest.get("semver"))


def _recorded(store: Store, out: Path) -> bool:
    try:
        with store.session() as session:
            return session.scalar(select(DatasetVersion.id).where(
                DatasetVersion.location == str(out))) is not None
    except Exception:  # noqa: BLE001 -- only deciding whether to clean up
        return True


def _plan(session: Session, dataset: Dataset, *, drop_discarded: bool) -> dict[str, Any]:
    versions = list(session.scalars(
        select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id)
        .order_by(DatasetVersion.version)
    ))
    first, latest = versions[0], versions[-1]
    # Columns, not ORM objects: ten thousand corrections load in a fraction of the time.
    corrections = session.execute(
        select(Correction.row, Correction.new_label, Correction.text_hash, Correction.version_id)
        .where(Correction.dataset_id == dataset.id).order_by(Correction.id)
    ).all()
    standing = _standing(session, dataset_id=dataset.id)
    discarded = np.array(sorted(r for r, a in standing.items() if a.decision == "discard"),
                         dtype=np.int64)
    dropped_before = _dropped_rows(latest)
    new_drops = len(np.setdiff1d(discarded, dropped_before)) if drop_discarded else 0
    return {
        "dataset_id": dataset.id, "name": dataset.name,
        "spec": SourceSpec(
            source=DEMO if dataset.source_kind == "demo" else dataset.source,
            split=dataset.split, config=dataset.config,
            text_columns=tuple(dataset.text_columns), label_column=dataset.label_column,
            labels=tuple(dataset.labels_option) if dataset.labels_option else None,
        ),
        "fingerprint0": first.fingerprint, "rows0": first.row_count,
        "latest_version": latest.version,
        "latest_id": latest.id, "latest_rows": latest.row_count,
        "rows": np.array([c.row for c in corrections], dtype=np.int64),
        "new_labels": np.array([c.new_label for c in corrections], dtype=np.int64),
        "hashes": [c.text_hash for c in corrections],
        "new_corrections": sum(1 for c in corrections if c.version_id is None),
        "discarded": discarded, "new_drops": new_drops,
        "audits": sorted({a for a, in session.execute(
            select(Audit.id).join(DatasetVersion, Audit.dataset_version_id == DatasetVersion.id)
            .where(DatasetVersion.dataset_id == dataset.id, Audit.status == "complete"))}),
        "source": dataset.source,
        "standing": standing,
    }


def _standing(session: Session, *, dataset_id: int) -> dict[int, Any]:
    """Each reviewed row's standing verdict (as in :func:`labelfix.sync.standing_verdicts`),
    as light rows; the few discards, which the changelog describes, as full annotations."""
    rows = session.execute(
        select(Annotation.id, Annotation.row, Annotation.decision, Annotation.retracts_id)
        .where(Annotation.dataset_id == dataset_id)
        .order_by(Annotation.annotated_at, Annotation.id)
    ).all()
    undone = {r.retracts_id for r in rows if r.decision == "undo"}
    standing = {r.row: r for r in rows if r.decision != "undo" and r.id not in undone}
    discard_ids = [r.id for r in standing.values() if r.decision == "discard"]
    full = {a.id: a for a in session.scalars(
        select(Annotation).where(Annotation.id.in_(discard_ids)))} if discard_ids else {}
    return {row: full.get(r.id, r) for row, r in standing.items()}


def _dropped_rows(version: DatasetVersion) -> np.ndarray:
    if version.row_map is None:
        return np.empty(0, dtype=np.int64)
    kept = np.frombuffer(version.row_map, dtype="<i8")
    all_rows = np.arange(int(kept.max()) + 1 if len(kept) else 0)
    return np.setdiff1d(all_rows, kept)


def _corrected_labels(view: DataView, rows: np.ndarray, new_labels: np.ndarray,
                      hashes: list[str]) -> np.ndarray:
    """Version 0's labels with the newest correction of each row applied, vectorized."""
    labels = view.labels.copy()
    if len(rows) == 0:
        return labels
    if rows.max() >= view.n_rows:
        raise WorkError(f"a correction names row {int(rows.max())} but the source has "
                        f"{view.n_rows} rows; the source changed since it was scanned")
    # The last correction of a row (by id) is its label: unique over the reversed order.
    reversed_rows = rows[::-1]
    _, first_in_reversed = np.unique(reversed_rows, return_index=True)
    last = len(rows) - 1 - first_in_reversed
    touched = rows[last]
    texts = view.texts[0].take(touched).to_pylist()
    pairs = view.texts[1].take(touched).to_pylist() if len(view.texts) > 1 else None
    for i, index in enumerate(last):
        expected = hashes[index]
        actual = hash_text(texts[i], pairs[i] if pairs is not None else None)
        if actual != expected:
            raise WorkError(f"row {int(touched[i])} of {view.name} has another text than the "
                            "one that was reviewed; the correction is not applied")
    labels[touched] = new_labels[last]
    return labels


def _output_table(view: DataView, labels: np.ndarray, keep: np.ndarray) -> Any:
    """The source table with its label column replaced, in the source's own representation."""
    import pyarrow as pa

    table = view.extra["table"]
    column = table.column(view.label_column)
    original = column.type
    names = list(view.label_names)
    if pa.types.is_string(original) or pa.types.is_large_string(original) \
            or pa.types.is_dictionary(original):
        new_column = pa.array(names, pa.string()).take(pa.array(labels))
    elif view.extra.get("integer_values") is not None:
        new_column = pa.array(np.asarray(view.extra["integer_values"])[labels])
    else:
        new_column = pa.array(labels, pa.int64())
    if not (pa.types.is_string(original) or pa.types.is_large_string(original)
            or pa.types.is_dictionary(original)):
        new_column = new_column.cast(original)
    index = table.schema.get_field_index(view.label_column)
    table = table.set_column(index, table.schema.field(index).with_type(new_column.type),
                             new_column)
    if not keep.all():
        table = table.filter(pa.array(keep))
    return table


@dataclass(frozen=True)
class _Output:
    """The new version's table and what describes it."""

    table: Any
    view: DataView
    semver: str
    fingerprint: str


# Arrow types written as a datasets ``Value`` without asking datasets.
_VALUE_DTYPES = {
    "string": "string", "large_string": "large_string", "bool": "bool", "int8": "int8",
    "int16": "int16", "int32": "int32", "int64": "int64", "uint8": "uint8", "uint16": "uint16",
    "uint32": "uint32", "uint64": "uint64", "halffloat": "float16", "float": "float32",
    "double": "float64",
}
# datasets shards save_to_disk at 500 MB; below that one Arrow file is what it writes too.
_ONE_FILE_BYTES = 400 << 20


def _features(output: _Output) -> dict[str, Any] | None:
    """The version's features as ``datasets.Features.to_dict()``: the source's own, or built
    for plain columns (integer labels with names become a ClassLabel). None for other types."""
    import pyarrow as pa

    saved = hf_features(output.view.extra["table"])
    if saved is not None:
        return saved
    features: dict[str, Any] = {}
    view = output.view
    for field in output.table.schema:
        if field.name == view.label_column and pa.types.is_integer(field.type) \
                and view.extra.get("integer_values") is None:
            features[field.name] = {"names": list(view.label_names), "_type": "ClassLabel"}
        elif str(field.type) in _VALUE_DTYPES:
            features[field.name] = {"dtype": _VALUE_DTYPES[str(field.type)], "_type": "Value"}
        else:
            return None
    return features


def _as_dataset(output: _Output) -> Any:
    """A ``datasets.Dataset`` with the version's features (ClassLabel names included)."""
    from datasets import ClassLabel, Dataset, DatasetInfo, Features

    table, view = output.table, output.view
    saved = _features(output)
    if saved is not None:
        features = Features.from_dict(saved)
    else:
        features = Features.from_arrow_schema(table.replace_schema_metadata(None).schema)
        import pyarrow as pa

        label_type = table.schema.field(view.label_column).type
        if pa.types.is_integer(label_type) and view.extra.get("integer_values") is None:
            features[view.label_column] = ClassLabel(names=list(view.label_names))
    table = table.replace_schema_metadata(None).cast(features.arrow_schema)
    # Our fingerprint: otherwise datasets hashes the whole table again to make its own.
    return Dataset(table, info=DatasetInfo(features=features, version=output.semver),
                   fingerprint=output.fingerprint)


def _save_arrow(output: _Output, folder: Path) -> bool:
    """Write what ``Dataset.save_to_disk`` writes for one shard, with pyarrow alone.

    Importing datasets and its writer cost more than the write itself. Returns False (nothing
    written) where datasets should do it: types outside plain values and ClassLabel, or data
    large enough for datasets to shard.
    """
    import pyarrow as pa

    features = _features(output)
    if features is None or output.table.nbytes > _ONE_FILE_BYTES:
        return False
    table = output.table.replace_schema_metadata(None)
    schema_types = {name: pa.int64() for name, f in features.items()
                    if f.get("_type") == "ClassLabel"}
    if schema_types:
        table = table.cast(pa.schema([
            pa.field(f.name, schema_types.get(f.name, f.type)) for f in table.schema]))
    table = table.replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})})
    folder.mkdir()
    data_file = "data-00000-of-00001.arrow"
    with pa.OSFile(str(folder / data_file), "wb") as sink, \
            pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1000)
    major, minor, patch = (int(p) for p in output.semver.split("."))
    (folder / "dataset_info.json").write_text(json.dumps({
        "citation": "", "description": "", "features": features, "homepage": "",
        "license": "", "version": {"version_str": output.semver, "major": major,
                                   "minor": minor, "patch": patch},
    }, indent=2), encoding="utf-8")
    (folder / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": data_file}], "_fingerprint": output.fingerprint,
        "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
        "_output_all_columns": False, "_split": None,
    }, indent=2), encoding="utf-8")
    return True


def _semver(source_version: str | None, version_number: int) -> str:
    """0.0.0 (or the source's version) with its minor part bumped once per labelfix version."""
    base = source_version or "0.0.0"
    parts = (base.split(".") + ["0", "0", "0"])[:3]
    try:
        major, minor = int(parts[0]), int(parts[1])
    except ValueError:
        major, minor = 0, 0
    return f"{major}.{minor + version_number}.0"


def _write(output: _Output, folder: Path, fmt: str) -> None:
    if fmt == "arrow" and _save_arrow(output, folder):
        return
    quiet_datasets()
    dataset = _as_dataset(output)
    if fmt == "arrow":
        dataset.save_to_disk(str(folder))
        return
    folder.mkdir()
    target = str(folder / DATA_FILES[fmt])
    if fmt == "parquet":
        dataset.to_parquet(target)
    elif fmt == "csv":
        dataset.to_csv(target, index=False)
    else:
        dataset.to_json(target, lines=True, force_ascii=False)


def _record(session: Session, plan: dict[str, Any], *, view: DataView, out: Path, fmt: str,
            keep: np.ndarray, labels: np.ndarray, new_fingerprint: str,
            version_number: int) -> DatasetVersion:
    """Record the written folder as the next version.

    Raises:
        WorkError: another export recorded a version, or verdicts arrived, since this one
            was planned (on a shared database); nothing is recorded and a rerun exports them.
    """
    lock_dataset(session, plan["dataset_id"])
    latest = session.scalar(select(DatasetVersion.version).where(
        DatasetVersion.dataset_id == plan["dataset_id"]).order_by(DatasetVersion.version.desc()))
    pending = session.scalar(select(func.count()).select_from(Correction).where(
        Correction.dataset_id == plan["dataset_id"], Correction.version_id.is_(None)))
    if latest != plan["latest_version"] or pending != plan["new_corrections"]:
        raise WorkError(f"{plan['name']} changed while this export was writing (another export "
                        "or new verdicts); nothing was recorded, run the export again")
    version = DatasetVersion(
        dataset_id=plan["dataset_id"], version=version_number, fingerprint=new_fingerprint,
        row_count=int(keep.sum()), parent_id=plan["latest_id"], location=str(out), format=fmt,
        corrections_applied=plan["new_corrections"], discarded_dropped=int((~keep).sum()),
        row_map=None if keep.all() else np.flatnonzero(keep).astype("<i8").tobytes(),
        labels=np.ascontiguousarray(labels[keep], dtype="<i4").tobytes(),
    )
    session.add(version)
    session.flush()
    session.execute(update(Correction).where(
        Correction.dataset_id == plan["dataset_id"], Correction.version_id.is_(None)
    ).values(version_id=version.id))
    return version


def _write_changelog(session: Session, folder: Path, *, dataset_id: int, view: DataView,
                     version_number: int, dropped: np.ndarray,
                     standing: dict[int, Any]) -> None:
    names = list(view.label_names)
    rows = session.execute(
        select(Correction.row, Annotation.decision, Correction.old_label, Correction.new_label,
               Annotation.annotator, Annotation.backend, Correction.audit_id,
               Annotation.annotated_at, DatasetVersion.version)
        .join(Annotation, Correction.annotation_id == Annotation.id)
        .outerjoin(DatasetVersion, Correction.version_id == DatasetVersion.id)
        .where(Correction.dataset_id == dataset_id).order_by(Correction.id)
    ).all()
    dropped_set = set(dropped.tolist())
    with (folder / "corrections.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "change", "old_label", "new_label", "annotator", "backend",
                         "audit_id", "reviewed_at", "version"])
        writer.writerows(
            [r.row, "undo" if r.decision == "undo" else "relabel", names[r.old_label],
             names[r.new_label], r.annotator, r.backend, r.audit_id,
             r.annotated_at.isoformat(), r.version if r.version is not None else version_number]
            for r in rows
        )
        for row in sorted(r for r, a in standing.items() if a.decision == "discard"):
            annotation = standing[row]
            writer.writerow([
                row, "dropped" if row in dropped_set else "discarded (kept)",
                names[int(view.labels[row])], "", annotation.annotator, annotation.backend,
                "", annotation.annotated_at.isoformat(), version_number,
            ])


def _write_manifest(folder: Path, *, plan: dict[str, Any], view: DataView,
                    version: DatasetVersion, semver: str, fmt: str, rows: int,
                    new_fingerprint: str) -> None:
    from labelfix.detect import library_version

    manifest = {
        "dataset": plan["name"], "version": version.version, "semver": semver,
        "parent_version": plan["latest_version"], "format": fmt,
        "data": None if fmt == "arrow" else DATA_FILES[fmt],
        "source": plan["source"], "source_fingerprint": plan["fingerprint0"],
        "fingerprint": new_fingerprint, "rows": rows,
        "corrections_applied": plan["new_corrections"],
        "corrections_total": int(len(np.unique(plan["rows"]))),
        "discarded_dropped": version.discarded_dropped,
        "audits": plan["audits"], "label_names": list(view.label_names),
        "labelfix_version": __version__, "cleanlab_version": library_version(),
        "created_at": utcnow().isoformat(),
    }
    (folder / "labelfix.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def push_to_hub(path: Path, repo: str, *, semver: str, private: bool = False) -> None:
    """Upload an exported version to the Hugging Face hub and tag it ``v<semver>``.

    Raises:
        WorkError: no network, no token, or the hub refused.
    """
    from datasets import load_from_disk

    token = os.environ.get("HF_TOKEN")
    try:
        manifest = json.loads((path / "labelfix.json").read_text())
        if manifest["format"] == "arrow":
            dataset = load_from_disk(str(path))
        else:
            from datasets import load_dataset

            kind = "json" if manifest["format"] == "jsonl" else manifest["format"]
            dataset = load_dataset(kind, data_files=str(path / manifest["data"]), split="train")
        dataset.push_to_hub(repo, private=private, token=token)
        from huggingface_hub import HfApi

        HfApi(token=token).create_tag(repo, tag=f"v{semver}", repo_type="dataset")
    except Exception as exc:  # the hub client raises many kinds; each is one line for the user
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise WorkError(f"cannot push {path} to the Hugging Face hub as {repo}: {text[:300]}; "
                        "the version is written locally (check the network and HF_TOKEN)"
                        ) from None
