"""Loading sources into one view: files, saved datasets, hub-style folders, the demo; bad data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labelfix.data import SourceSpec, load
from labelfix.errors import DataError


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_files_of_every_format_load_the_same_rows(tmp_path: Path, synthetic, suffix: str) -> None:
    path = synthetic.write(tmp_path / f"data{suffix}")
    view = load(SourceSpec(str(path)))
    assert view.n_rows == synthetic.n
    assert view.label_names == tuple(sorted(synthetic.label_names))
    sorted_names = sorted(synthetic.label_names)
    expected = [sorted_names.index(name) for name in synthetic.label_strings()]
    assert view.labels.tolist() == expected
    assert view.text_lists()[0] == synthetic.texts
    assert view.name == "data"


def test_same_rows_in_any_format_have_the_same_fingerprint(tmp_path: Path, synthetic) -> None:
    prints = {load(SourceSpec(str(synthetic.write(tmp_path / f"d{s}")))).fingerprint
              for s in (".csv", ".jsonl", ".parquet")}
    assert len(prints) == 1


def test_fingerprint_changes_when_any_text_or_label_changes(tmp_path: Path, synthetic) -> None:
    base = load(SourceSpec(str(synthetic.write(tmp_path / "a.csv")))).fingerprint
    synthetic.texts[123] = synthetic.texts[123] + "!"
    changed_text = load(SourceSpec(str(synthetic.write(tmp_path / "b.csv")))).fingerprint
    synthetic.texts[123] = synthetic.texts[123][:-1]
    synthetic.labels[7] = (synthetic.labels[7] + 1) % 4
    changed_label = load(SourceSpec(str(synthetic.write(tmp_path / "c.csv")))).fingerprint
    assert len({base, changed_text, changed_label}) == 3


def test_fingerprint_does_not_depend_on_where_a_text_splits(tmp_path: Path) -> None:
    """Moving a character from one text to the next must change the fingerprint."""
    import pandas as pd

    pd.DataFrame({"text": ["ab", "c"], "label": ["x", "y"]}).to_csv(tmp_path / "a.csv",
                                                                   index=False)
    pd.DataFrame({"text": ["a", "bc"], "label": ["x", "y"]}).to_csv(tmp_path / "b.csv",
                                                                   index=False)
    a = load(SourceSpec(str(tmp_path / "a.csv"))).fingerprint
    b = load(SourceSpec(str(tmp_path / "b.csv"))).fingerprint
    assert a != b


def test_demo_is_the_ag_news_test_split_in_order() -> None:
    view = load(SourceSpec("demo"))
    assert view.n_rows == 7600
    assert view.name == "ag_news"
    assert view.label_names == ("World", "Sports", "Business", "Sci/Tech")
    assert np.bincount(view.labels).tolist() == [1900] * 4
    assert view.text(0).startswith("Fears for T N pension after talks Unions representing")
    assert view.labels[0] == 2  # Business
    assert view.text(1).startswith("The Race is On: Second Private Team Sets Launch Date")


def test_save_to_disk_dataset_and_dataset_dict(tmp_path: Path, synthetic) -> None:
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"sentence": Value("string"),
                         "target": ClassLabel(names=list(synthetic.label_names))})
    dataset = Dataset.from_dict({"sentence": synthetic.texts, "target": synthetic.labels.tolist()},
                                features=features)
    dataset.save_to_disk(str(tmp_path / "single"))
    view = load(SourceSpec(str(tmp_path / "single")))
    # ClassLabel names are kept in their order, with no --labels needed.
    assert view.label_names == synthetic.label_names
    assert view.labels.tolist() == synthetic.labels.tolist()
    assert view.text_columns == ("sentence",) and view.label_column == "target"

    DatasetDict({"train": dataset, "test": dataset.select(range(50))}).save_to_disk(
        str(tmp_path / "dict"))
    assert load(SourceSpec(str(tmp_path / "dict"), split="test")).n_rows == 50
    with pytest.raises(DataError, match="choose one with --split"):
        load(SourceSpec(str(tmp_path / "dict")))
    with pytest.raises(DataError, match="no split 'dev'"):
        load(SourceSpec(str(tmp_path / "dict"), split="dev"))


def test_hub_style_folder_goes_through_load_dataset(tmp_path: Path, synthetic) -> None:
    folder = tmp_path / "hub_like"
    folder.mkdir()
    synthetic.write(folder / "test.csv")
    view = load(SourceSpec(str(folder), split="test"))
    assert view.n_rows == synthetic.n
    assert view.source_kind == "hub"


def test_unknown_hub_id_offline_fails_with_one_clear_error() -> None:
    from labelfix.errors import LabelfixError

    with pytest.raises(LabelfixError) as info:
        load(SourceSpec("no-such-user/no-such-dataset-xyz"))
    assert "no-such-user/no-such-dataset-xyz" in str(info.value)


def test_sentence_pairs(tmp_path: Path) -> None:
    import pandas as pd

    pd.DataFrame({"premise": ["a b", "c d", "e f"], "hypothesis": ["x", "y", "z"],
                  "label": ["yes", "no", "yes"]}).to_csv(tmp_path / "pairs.csv", index=False)
    view = load(SourceSpec(str(tmp_path / "pairs.csv"), text_columns=("premise", "hypothesis")))
    assert view.text(1) == "c d" and view.text_pair(1) == "y"


def test_integer_labels_take_names_from_labels_option(tmp_path: Path, synthetic) -> None:
    path = synthetic.write(tmp_path / "ints.csv", integer_labels=True)
    view = load(SourceSpec(str(path), labels=("a", "b", "c", "d")))
    assert view.label_names == ("a", "b", "c", "d")
    assert view.labels.tolist() == synthetic.labels.tolist()


def test_labels_option_fixes_the_order_of_string_labels(tmp_path: Path, synthetic) -> None:
    path = synthetic.write(tmp_path / "s.csv")
    reverse = tuple(reversed(synthetic.label_names))
    view = load(SourceSpec(str(path), labels=reverse))
    assert view.label_names == reverse
    assert view.labels.tolist() == (3 - synthetic.labels).tolist()


# Bad input: each gets a DataError whose message names the problem and the fix.

def test_missing_path() -> None:
    with pytest.raises(DataError, match="does not exist"):
        load(SourceSpec("nowhere/data.csv"))


def test_missing_text_column_names_the_columns(tmp_path: Path, synthetic) -> None:
    path = synthetic.write(tmp_path / "d.csv")
    with pytest.raises(DataError, match=r"no such column; its columns are text, label"):
        load(SourceSpec(str(path), text_columns=("body",)))


def test_missing_label_column_names_the_columns(tmp_path: Path) -> None:
    import pandas as pd

    pd.DataFrame({"text": ["a", "b"], "tag": ["x", "y"]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DataError, match=r"--label-column.*columns: text, tag"):
        load(SourceSpec(str(tmp_path / "d.csv")))


def test_labels_outside_the_label_names(tmp_path: Path, synthetic) -> None:
    path = synthetic.write(tmp_path / "d.csv")
    with pytest.raises(DataError, match=r"not among the label names.*SciTech"):
        load(SourceSpec(str(path), labels=("World", "Sports", "Business")))
    ints = synthetic.write(tmp_path / "i.csv", integer_labels=True)
    with pytest.raises(DataError, match=r"only cover 0..2"):
        load(SourceSpec(str(ints), labels=("a", "b", "c")))


def test_one_class_only(tmp_path: Path) -> None:
    import pandas as pd

    pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", "x", "x"]}).to_csv(
        tmp_path / "d.csv", index=False)
    with pytest.raises(DataError, match="at least two classes"):
        load(SourceSpec(str(tmp_path / "d.csv")))


def test_empty_dataset(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="no rows"):
        load(SourceSpec(str(tmp_path / "d.csv")))


def test_empty_and_missing_texts_name_the_first_rows(tmp_path: Path) -> None:
    import pandas as pd

    pd.DataFrame({"text": ["ok", "", "fine", None, "   "], "label": ["a", "b", "a", "b", "a"]}
                 ).to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    with pytest.raises(DataError, match=r"3 row\(s\): 1, 3, 4"):
        load(SourceSpec(str(tmp_path / "d.jsonl")))


def test_missing_labels_name_the_rows(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("text,label\na,x\nb,\nc,y\n")
    with pytest.raises(DataError, match=r"missing in 1 row\(s\): 1"):
        load(SourceSpec(str(tmp_path / "d.csv")))


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "d.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read"):
        load(SourceSpec(str(tmp_path / "d.parquet")))
