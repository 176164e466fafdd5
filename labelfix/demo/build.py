"""Build labelfix/demo/ag_news_test.parquet from the AG News test split CSV.

Usage: python -m labelfix.demo.build PATH/TO/ag_news/test.csv

The CSV has no header and three quoted fields: class index (1-4), title, description. The demo
keeps the row order; text = title + " " + description, label = class index - 1
(0 World, 1 Sports, 2 Business, 3 Sci/Tech).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

EXPECTED_MD5 = "d52ea96a97a2d943681189a97654912d"


def main(csv_path: str) -> None:
    raw = Path(csv_path).read_bytes()
    md5 = hashlib.md5(raw).hexdigest()
    if md5 != EXPECTED_MD5:
        sys.exit(f"{csv_path}: md5 {md5}, expected {EXPECTED_MD5} (the AG News test split)")
    table = pacsv.read_csv(
        csv_path,
        read_options=pacsv.ReadOptions(column_names=["class", "title", "description"]),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types={"class": pa.int64()}),
    )
    titles = table.column("title").to_pylist()
    descriptions = table.column("description").to_pylist()
    texts = [f"{t} {d}" for t, d in zip(titles, descriptions, strict=True)]
    labels = [c - 1 for c in table.column("class").to_pylist()]
    out = Path(__file__).resolve().parent / "ag_news_test.parquet"
    pq.write_table(
        pa.table({"text": pa.array(texts, pa.string()), "label": pa.array(labels, pa.int8())}),
        out,
        compression="zstd",
        compression_level=19,
    )
    print(f"wrote {out}: {len(texts)} rows, {out.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1])
