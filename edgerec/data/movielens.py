"""MovieLens-100K, read from the copy inside recbole==1.2.1 (recbole/dataset_example/ml-100k/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edgerec.data.assets import RECBOLE
from edgerec.data.readers import Col, read_delimited
from edgerec.data.schema import EventDataset, make_events
from edgerec.data.sources import FileSource

FOLDER = "dataset_example/ml-100k"
HINT = "Expected a RecBole atomic file (tab-separated, header like `user_id:token`)."


def load_ml100k(root: str | Path | None = None) -> EventDataset:
    """All 100,000 ratings as implicit interactions (label = 1), with the rating kept as a side feature.

    root: a folder holding ml-100k.{inter,item,user}; default is the pinned recbole package.
    """
    src = FileSource(RECBOLE, FOLDER, root)
    inter = read_delimited(
        *src.read("ml-100k.inter"), delimiter="\t", strip_type_suffix=True, fix_hint=HINT,
        columns=[Col("user_id", "int64"), Col("item_id", "int64"), Col("rating", "int8"),
                 Col("timestamp", "int64")],
    )
    items = read_delimited(
        *src.read("ml-100k.item"), delimiter="\t", strip_type_suffix=True, fix_hint=HINT,
        columns=[Col("item_id", "int64"), Col("movie_title", "string", nullable=True),
                 Col("release_year", "string", nullable=True), Col("class", "string", nullable=True)],
    )
    users = read_delimited(
        *src.read("ml-100k.user"), delimiter="\t", strip_type_suffix=True, fix_hint=HINT,
        columns=[Col("user_id", "int64"), Col("age", "int16"), Col("gender", "string"),
                 Col("occupation", "string"), Col("zip_code", "string", nullable=True)],
    )
    # release_year is free text in the RecBole file ('unkonwn', and one row where the title split
    # leaves 'V'): keep 4-digit years, null the rest, and count them in meta.json.
    year_txt = items.column("release_year")
    is_year = pc.fill_null(pc.match_substring_regex(year_txt, r"^\d{4}$"), False)
    year = pc.cast(pc.if_else(is_year, year_txt, pa.scalar(None, pa.string())), pa.int16())
    n_bad_years = int(items.num_rows - pc.sum(is_year).as_py())
    genres = pc.fill_null(items.column("class"), "unknown")
    first_genre = pc.list_element(pc.split_pattern(genres, " "), 0)
    items = pa.table({
        "item_id": items.column("item_id"),
        "title": items.column("movie_title"),
        "release_year": year,
        "genres": genres,
        "genre": first_genre,  # first listed genre: a single categorical for models
    })
    age = users.column("age").to_numpy()
    users = users.append_column("age_bucket", pa.array(np.digitize(age, [18, 25, 35, 45, 50, 56]).astype(np.int8)))
    events = make_events({
        "user_id": inter.column("user_id"),
        "item_id": inter.column("item_id"),
        "ts": inter.column("timestamp"),
        "label": pa.array(np.ones(inter.num_rows, dtype=np.int8)),
        "position": pa.nulls(inter.num_rows, pa.int16()),
        "rating": inter.column("rating"),
    })
    meta = {
        "source": f"{RECBOLE.requirement}: recbole/{FOLDER}" if root is None else str(root),
        "license": "MovieLens terms (GroupLens): research use, do not redistribute",
        "side_features": {"rating": "int8 1-5 explicit rating (all events are label 1)"},
        "item_features": {"title": "string", "release_year": "int16", "genres": "space-separated",
                          "genre": "first genre (categorical)"},
        "user_features": {"age": "int16", "age_bucket": "int8 (MovieLens 1M buckets)", "gender": "M/F",
                          "occupation": "string", "zip_code": "string"},
        "release_year_unparsed": n_bad_years,
        "notes": "Every rating is an implicit positive (DiCycle protocol); negatives are sampled.",
    }
    return EventDataset("ml-100k", events, items=items, users=users, meta=meta)
