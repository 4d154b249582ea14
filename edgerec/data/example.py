"""A small example log shaped like a user's own export, for docs/your-data.md and the import tests.

`edgerec data example DIR` writes DIR/events.csv and DIR/items.csv: an O2O impression log that looks
like what a platform exports, not like our bundled sets:
  * string ids (`u00042`, `poi-0017`), renamed columns (`uid, poi, event_ms, slot, clicked, session`)
  * millisecond timestamps, and a local clock of UTC+8: the log's behaviour follows the LOCAL hour
    (lunch at 12:00 in Shanghai), so its calendar features are right only when imported with
    `--tz Asia/Shanghai`
  * extra columns: the item's category inline on every row (`cat`), a per-user float
    (`scroll_depth`, how far down the feed the user usually reads: a numeric attribute to bucket),
    and the app version (`app`, an event side feature)
  * items.csv with the title text and a price (float) of every item, one item nobody was shown

Underneath it is the O2O simulator at a size and seed the other benchmarks never use (`example`: 800
users, 320 items, 30 days, seed 11; `tiny` for smoke tests), its times shifted by -8 h so that the
simulator's hours become Shanghai's local hours. It complements
real data and replaces none: the bundled sets are untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from edgerec.data.simulator import preset, simulate

TZ = "Asia/Shanghai"
UTC_OFFSET_S = 8 * 3600
SIZES = {"example": ("small", dict(n_users=800, n_items=320, n_days=30)), "tiny": ("tiny", {})}


def example_simulation(size: str = "example", seed: int = 11):
    """The simulation behind the example log (its ground truth, for bench/your_data.py)."""
    base, over = SIZES[size]
    return simulate(preset(base, seed=seed, **over))


def write_example_log(out: str | Path, size: str = "example", seed: int = 11) -> dict[str, Path]:
    """Write events.csv and items.csv under `out`. -> their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sim = example_simulation(size, seed)
    ds = sim.dataset
    e = ds.events
    n = e.num_rows
    rng = np.random.default_rng(seed)
    items = ds.items
    cat_of = dict(zip(items.column("item_id").to_pylist(), items.column("category").to_pylist()))
    rho = dict(zip(sim.user_truth.column("user_id").to_pylist(), sim.user_truth.column("rho").to_pylist()))
    user = e.column("user_id").to_numpy()
    item = e.column("item_id").to_numpy()
    ts_ms = (e.column("ts").to_numpy() - UTC_OFFSET_S) * 1000 + rng.integers(0, 1000, n)  # local clock = sim clock
    events = pa.table({
        "uid": pa.array([f"u{u:05d}" for u in user]),
        "poi": pa.array([f"poi-{i:04d}" for i in item]),
        "event_ms": pa.array(ts_ms),
        "slot": e.column("position"),
        "clicked": e.column("label"),
        "session": pa.array([f"s{r}" for r in e.column("request_id").to_numpy()]),
        "cat": pa.array([cat_of[i] for i in item]),
        "scroll_depth": pa.array([round(float(rho[u]), 3) for u in user]),
        "app": pa.array(np.where(rng.random(n) < 0.7, "7.2.0", "7.1.4")),
    })
    ids = items.column("item_id").to_numpy()
    price = np.round(rng.gamma(3.0, 12.0, len(ids)), 1)
    catalogue = pa.table({
        "poi": pa.array([f"poi-{i:04d}" for i in ids] + ["poi-9999"]),
        "name": pa.chunked_array([items.column("title"), pa.array(["Night market stall (new)"])]).combine_chunks(),
        "price": pa.array(list(price) + [9.5]),
    })
    paths = {"events": out / "events.csv", "items": out / "items.csv"}
    plain = pacsv.WriteOptions(quoting_style="needed")  # as most exports look: quotes only where needed
    pacsv.write_csv(events, paths["events"], plain)
    pacsv.write_csv(catalogue, paths["items"], plain)
    return paths


IMPORT_ARGS = ["--map", "user=uid", "--map", "item=poi", "--map", "time=event_ms", "--map", "label=clicked",
               "--map", "position=slot", "--map", "request=session", "--map", "item.category=cat",
               "--map", "user.scroll_depth=scroll_depth", "--map", "side.app=app", "--map", "items.title=name",
               "--bucket", "scroll_depth=4", "--bucket", "price=4", "--time-unit", "ms", "--tz", TZ]
"""The `edgerec data import` flags for this log (after `--events DIR/events.csv --items DIR/items.csv`)."""


def describe_example(paths: dict[str, Path]) -> str:
    n = pc.count(pacsv.read_csv(paths["events"]).column("uid")).as_py()
    return f"{paths['events']} ({n:,} rows) and {paths['items']}"
