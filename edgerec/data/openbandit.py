"""Open Bandit Dataset (ZOZOTOWN) small sample, read from obp==0.4.1 (obp/dataset/obd/).

Six logs of 10,000 exposures each: policy {random, bts} x campaign {all, men, women}. Each row is
one item shown at position 1-3 with a click label and the logging propensity. The data has no raw
user id: we derive `user_id` from the combination of the four hashed user features (about 240
distinct combinations), so a "user" is a user-feature cohort. Item ids are local to a campaign, so
we namespace them: item_id = campaign_index * 1000 + raw item id (raw id kept as item_id_raw).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edgerec.data.assets import OBP
from edgerec.data.readers import Col, read_delimited
from edgerec.data.schema import EventDataset, make_events
from edgerec.data.sources import FileSource

POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
FOLDER = "dataset/obd"
HINT = "Expected an Open Bandit log CSV (timestamp,item_id,position,click,propensity_score,...)."


def _user_key(f0, f1, f2, f3) -> np.ndarray:
    """Stable int64 id for a user-feature combination (first 8 bytes of md5, non-negative)."""
    out = np.empty(len(f0), dtype=np.int64)
    cache: dict[tuple, int] = {}
    for i, key in enumerate(zip(f0, f1, f2, f3)):
        v = cache.get(key)
        if v is None:
            digest = hashlib.md5("|".join(key).encode()).digest()
            v = cache[key] = int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
        out[i] = v
    return out


def load_obd(root: str | Path | None = None, policies=POLICIES, campaigns=CAMPAIGNS) -> EventDataset:
    """root: a folder laid out like obp/dataset/obd (<policy>/<campaign>/<campaign>.csv)."""
    src = FileSource(OBP, FOLDER, root)
    parts, item_parts = [], []
    for ci, campaign in enumerate(CAMPAIGNS):
        if campaign not in campaigns:
            continue
        for policy in policies:
            log = read_delimited(
                *src.read(f"{policy}/{campaign}/{campaign}.csv"), fix_hint=HINT,
                columns=[Col("timestamp", "string"), Col("item_id", "int64"), Col("position", "int16"),
                         Col("click", "int8"), Col("propensity_score", "float32")]
                + [Col(f"user_feature_{k}", "string") for k in range(4)],
            )
            ts = pc.cast(pc.strptime(pc.utf8_slice_codeunits(log.column("timestamp"), 0, 19),
                                     format="%Y-%m-%d %H:%M:%S", unit="s"), pa.int64())
            uf = [log.column(f"user_feature_{k}").to_pylist() for k in range(4)]
            n = log.num_rows
            parts.append({
                "user_id": _user_key(*uf),
                "item_id": pc.add(log.column("item_id"), ci * 1000).to_numpy(),
                "ts": ts.to_numpy(),
                "label": log.column("click").to_numpy(),
                "position": log.column("position").to_numpy(),
                "propensity": log.column("propensity_score").to_numpy(),
                "policy": np.full(n, policy, dtype=object),
                "campaign": np.full(n, campaign, dtype=object),
                "item_id_raw": log.column("item_id").to_numpy(),
                **{f"user_feature_{k}": np.asarray(uf[k], dtype=object) for k in range(4)},
            })
        items = read_delimited(
            *src.read(f"{policies[0]}/{campaign}/item_context.csv"),
            fix_hint="Expected item_context.csv (item_id,item_feature_0..3).",
            columns=[Col("item_id", "int64"), Col("item_feature_0", "float32")]
            + [Col(f"item_feature_{k}", "string") for k in (1, 2, 3)],
        )
        item_parts.append(items.set_column(0, "item_id", pc.add(items.column("item_id"), ci * 1000))
                          .append_column("campaign", pa.array([campaign] * items.num_rows)))
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.lexsort((cols["item_id"], cols["ts"]))
    cols = {k: v[order] for k, v in cols.items()}
    for k in ("policy", "campaign") + tuple(f"user_feature_{i}" for i in range(4)):
        cols[k] = pa.array(cols[k].tolist(), pa.string())
    events = make_events(cols)
    meta = {
        "source": f"{OBP.requirement}: obp/{FOLDER}" if root is None else str(root),
        "license": "Open Bandit Dataset (ZOZO); upstream says CC BY 4.0 (not verified in the wheel)",
        "side_features": {"propensity": "float32 logging propensity", "policy": "random|bts",
                          "campaign": "all|men|women", "item_id_raw": "item id within its campaign",
                          "user_feature_0..3": "hashed user categoricals"},
        "item_features": {"item_feature_0": "float32 (standardized)", "item_feature_1..3": "hashed categoricals",
                          "campaign": "campaign the item belongs to"},
        "notes": "user_id is a user-feature cohort (no raw user id in OBD). Timestamps truncated to seconds.",
    }
    return EventDataset("obd", events, items=pa.concat_tables(item_parts), meta=meta)
