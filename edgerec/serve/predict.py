"""Batch scoring of raw rows: `edgerec predict --run R --input rows.csv --out scores.parquet`.

Each input row is (user, item, time) in the user's own ids, written as his log is: by default the
columns and the time unit that `edgerec data import` mapped (so rows cut from the log itself score
as they are), else `user_id, item_id, ts` in unix seconds; `--map` / `--time-unit` say otherwise
(naive ISO times are local to the dataset's zone). Its history is the run's dataset log strictly before ts (THE causal
cut, `causal_ends`), exactly what the sample builders and the service give a request, so a score
here equals the service's for the same user, item and moment. New users and items are scored
too: an id the run never saw takes the out-of-vocabulary index (no user vector, no item vector;
an unknown user has an empty history). The display position is never an input (served scores).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from edgerec.data.imports import _SECONDS_AS_MS, IdMap, _text, parse_time, read_file
from edgerec.data.samples import Split, lookup_sorted
from edgerec.errors import DataFormatError
from edgerec.features.definition import causal_ends, time_key


def _indices(raw_text: pa.Array, idmap: IdMap | None, vocab: np.ndarray, oov: int, what: str,
             source: str) -> np.ndarray:
    """The user's ids -> the run's 1-based indices (the OOV index for ids it never saw)."""
    if idmap is not None:
        dense = idmap.encode_array(raw_text)  # null: an id the import never saw
        raw = pc.fill_null(dense, -1).to_numpy()
    else:
        ok = pc.fill_null(pc.match_substring_regex(raw_text, r"^\d{1,18}$"), False)
        if not pc.all(ok).as_py():
            row = int(pc.index(ok, False).as_py())
            raise DataFormatError(f"{source}: row {row + 1} (line {row + 2}), column {what!r}: "
                                  f"{raw_text[row].as_py()!r} is not an integer id (this run's dataset has integer ids)")
        raw = pc.cast(raw_text, pa.int64()).to_numpy()
    found, at = lookup_sorted(vocab, raw)
    return np.where(found, at + 1, oov).astype(np.int64)


PLAIN_COLUMNS = {"user": "user_id", "item": "item_id", "time": "ts"}


def _input_format(dataset: str, have: list[str], columns: dict[str, str] | None,
                  time_unit: str | None) -> tuple[dict[str, str], str, dict[str, str]]:
    """-> ({user, item, time} -> the input's column, time unit, the import's events map): the flags first, then the import's
    own columns (the run's dataset is imported and the input has them all), else user_id / item_id /
    ts; the time in the import's unit when it is the import's time column, else in seconds."""
    from edgerec.data import registry
    from edgerec.data.imports import read_dataset_file

    info = registry.parse_id(dataset)[0]
    own = read_dataset_file(info.dataset_file) if info.dataset_file is not None else None
    cols = dict(PLAIN_COLUMNS)
    if own is not None and all(own.events.map.get(f) in have for f in cols):
        cols = {f: own.events.map[f] for f in cols}
    bad = sorted(set(columns or {}) - set(cols))
    if bad:
        raise DataFormatError(f"--map {bad[0]}=...: predict reads only user, item and time "
                              "(e.g. --map user=uid --map time=event_ms)")
    cols.update(columns or {})
    # the import's unit only for rows in the log's own layout: a plain user_id,item_id,ts file is in
    # seconds even when the log's time column was also called ts
    log_format = own is not None and all(cols[f] == own.events.map.get(f) for f in cols)
    return cols, time_unit or (own.time_unit if log_format else "s"), dict(own.events.map) if own else {}


def predict_rows(run_dir: str | Path, input_path: str | Path, out_path: str | Path, time_unit: str | None = None,
                 columns: dict[str, str] | None = None, batch_size: int = 4096, log=print) -> dict:
    """Score every row of `input_path`; write them with a `score` column to `out_path` (Parquet).
    `columns` maps user / item / time to the input's columns, `time_unit` is s, ms or iso; both
    default to the run's import (module docstring)."""
    from edgerec.io import atomic_path
    from edgerec.train.experiment import load_run

    t0 = time.time()
    cfg, model, samples = load_run(run_dir)
    model.eval()
    source = str(input_path)
    from edgerec.data.imports import _all_columns

    path = Path(input_path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    have = _all_columns(path)
    taken = [c for c in ("score", "known_user", "known_item") if c in have]
    if taken:
        raise DataFormatError(f"{path}: already has column(s) {taken}, which predict writes; rename them")
    cols, time_unit, own = _input_format(cfg.dataset, have, columns, time_unit)
    missing = [c for c in cols.values() if c not in have]
    if missing:
        log_cols = f"your log's {[own.get(f) for f in PLAIN_COLUMNS]} or " if own else ""
        raise DataFormatError(f"{path}: no column(s) {missing} (the file has {have[:20]}); predict reads "
                              f"{log_cols}user_id, item_id, ts, or name yours with --map user=COL --map item=COL "
                              "--map time=COL")
    core = [cols["user"], cols["item"], cols["time"]]
    # every input column comes back with the scores, as written: text in a CSV stays text (007, 7.10)
    rows = read_file(path, core + [c for c in have if c not in core], strings=set(have) - {cols["time"]})
    n = rows.num_rows
    maps = samples.id_maps or {}
    users = IdMap.from_table(maps["id_map_user"]) if "id_map_user" in maps else None
    items = IdMap.from_table(maps["id_map_item"]) if "id_map_item" in maps else None
    u_text, i_text = _text(rows.column(cols["user"])), _text(rows.column(cols["item"]))
    for name, col in ((cols["user"], u_text), (cols["item"], i_text)):
        empty = pc.fill_null(pc.equal(col, ""), True)
        if pc.any(empty).as_py():
            row = int(pc.index(empty, True).as_py())
            raise DataFormatError(f"{source}: row {row + 1} (line {row + 2}), column {name!r} is empty")
    ts, bad, out = parse_time(rows.column(cols["time"]), time_unit, samples.spec.tz)
    problem = pc.or_(pc.or_(bad, out), pc.is_null(ts))
    if pc.any(problem).as_py():
        row = int(pc.index(problem, True).as_py())
        raise DataFormatError(f"{source}: row {row + 1} (line {row + 2}), column {cols['time']!r}: cannot read "
                              f"{rows.column(cols['time'])[row].as_py()!r} as a time in 1970..2100 with --time-unit "
                              f"{time_unit} (s: unix seconds, ms: milliseconds, iso: ISO 8601)")
    if time_unit == "ms" and pc.approximate_median(ts).as_py() < _SECONDS_AS_MS:  # seconds read as ms: 1970
        raise DataFormatError(f"{source}: column {cols['time']!r} read as milliseconds puts the rows in 1970: "
                              "these look like unix seconds; pass --time-unit s")
    ts = ts.to_numpy().astype(np.int64)
    user = _indices(u_text, users, samples.user_ids, samples.spec.oov_user, cols["user"], source)
    item = _indices(i_text, items, samples.item_ids, samples.spec.oov_item, cols["item"], source)
    # the run's behaviour store is sorted by (user index, ts): the causal cut per row
    store_key = time_key(samples.store_user, samples.store_ts)  # sorted
    known = user != samples.spec.oov_user
    hist_end = np.where(known, causal_ends(store_key, time_key(user, ts)), 0)
    hist_start = np.where(known, np.searchsorted(store_key, time_key(user, 0), side="left"), 0)
    split = Split(user=user, item=item, ts=ts, label=np.zeros(n, np.float32), hist_start=hist_start,
                  hist_end=hist_end)
    scores = np.empty(n, np.float32)
    with torch.no_grad():
        for lo in range(0, n, batch_size):
            idx = np.arange(lo, min(lo + batch_size, n))
            scores[idx] = model(samples.make_batch(split, idx))["y_pred"].numpy()
    table = rows.append_column("score", pa.array(scores)).append_column(
        "known_user", pa.array(known)).append_column("known_item", pa.array(item != samples.spec.oov_item))
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)
    summary = {"rows": n, "new_users": int((~known).sum()), "new_items": int((item == samples.spec.oov_item).sum()),
               "seconds": round(time.time() - t0, 2), "model": cfg.model}
    log(f"scored {n:,} rows with {cfg.model} ({summary['new_users']:,} of unknown users, {summary['new_items']:,} of "
        f"unknown items: out-of-vocabulary vectors) -> {out_path} ({summary['seconds']} s)")
    return summary
