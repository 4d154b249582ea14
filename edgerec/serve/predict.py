"""Batch scoring of raw rows: `edgerec predict --run R --input rows.csv --out scores.parquet`.

Each input row is (user_id, item_id, ts) in the user's own ids and unix seconds (or ISO time,
local to the dataset's zone). Its history is the run's dataset log strictly before ts (THE causal
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

from edgerec.data.imports import IdMap, _text, parse_time, read_file
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


def predict_rows(run_dir: str | Path, input_path: str | Path, out_path: str | Path, time_unit: str = "s",
                 batch_size: int = 4096, log=print) -> dict:
    """Score every row of `input_path`; write them with a `score` column to `out_path` (Parquet)."""
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
    rows = read_file(path, ["user_id", "item_id", "ts"] + [c for c in have if c not in ("user_id", "item_id", "ts")],
                     strings={"user_id", "item_id"})  # every input column comes back, with the scores
    n = rows.num_rows
    maps = samples.id_maps or {}
    users = IdMap.from_table(maps["id_map_user"]) if "id_map_user" in maps else None
    items = IdMap.from_table(maps["id_map_item"]) if "id_map_item" in maps else None
    u_text, i_text = _text(rows.column("user_id")), _text(rows.column("item_id"))
    for name, col in (("user_id", u_text), ("item_id", i_text)):
        empty = pc.fill_null(pc.equal(col, ""), True)
        if pc.any(empty).as_py():
            row = int(pc.index(empty, True).as_py())
            raise DataFormatError(f"{source}: row {row + 1} (line {row + 2}), column {name!r} is empty")
    ts, bad, out = parse_time(rows.column("ts"), time_unit, samples.spec.tz)
    problem = pc.or_(pc.or_(bad, out), pc.is_null(ts))
    if pc.any(problem).as_py():
        row = int(pc.index(problem, True).as_py())
        raise DataFormatError(f"{source}: row {row + 1} (line {row + 2}), column 'ts': cannot read "
                              f"{rows.column('ts')[row].as_py()!r} as a time in 1970..2100 (--time-unit {time_unit}: "
                              "unix seconds, ms or ISO 8601)")
    ts = ts.to_numpy().astype(np.int64)
    user = _indices(u_text, users, samples.user_ids, samples.spec.oov_user, "user_id", source)
    item = _indices(i_text, items, samples.item_ids, samples.spec.oov_item, "item_id", source)
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
