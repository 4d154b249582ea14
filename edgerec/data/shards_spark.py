"""Impression-protocol shards written by a Spark job: `edgerec batch --shards CONFIG:EXPID --engine spark`.

Why: at the scale of a real exposure log the sample building is the step that needs the whole log
(sorting every user's clicks, cutting every exposure's history), and a team that has its logs in a
data lake runs that on Spark. The job writes the SAME shard folder as `edgerec.data.shards.write_shards`
(tests/test_scale.py compares them file by file), so its output trains directly with
`--set data.shards=DIR`.

One definition, two engines: Spark partitions the log by user, and each partition (whole users)
goes through `edgerec.data.samples.click_history`, the function `build_impressions` calls on the
whole log. Its pointers are then into that partition's own store; a user's global store offset
(the clicks of every user with a smaller index) turns them into the global ones. The time cuts,
the item cap, the side features and the summary come from the same helpers as in memory. What is
log-sized stays out of the driver's memory: Spark writes the folded rows to Parquet inside the
shard folder's temp folder, and the driver streams them, a row group at a time, into the split
files (in `event_row` order, as Spark sorted them) and into the memory-mapped store arrays.
Only catalogue-sized arrays (vocabularies, per-user offsets, per-item counts) are collected.

The `dicycle` protocol stays on the polars engine: its negatives are drawn by numpy's generator
over the whole log, which a partitioned job would not reproduce.

With a cluster master (`--spark-master spark://...`), the output folder must be on storage the
executors and the driver both see.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edgerec.data.samples import (_index, cap_info, cap_remap, check_split_fractions, click_history,
                                  impression_info, impression_spec, no_positions_message, split_of, time_cuts)
from edgerec.data.schema import EventDataset
from edgerec.data.shards import SPLITS, shard_folder, store_dtypes, write_manifest, write_vocabularies
from edgerec.errors import ConfigError, EdgerecError
from edgerec.features.time import local_clock, pack_slots

SAMPLE, STORED = 0, 1  # the `kind` of a folded row: an exposure (a sample) or a click (a store row)
FOLDED_SCHEMA = ("kind byte, user long, item long, ts long, label float, position long, event_row long, "
                 "split byte, rank long, repeat boolean")
# rank: for a sample, how many of its user's clicks come before it (hist_end - hist_start); for a
# stored click, its place among its user's clicks (so its store row is the user's offset + rank)
ROWS_PER_PARTITION = 2_000_000  # events per Spark partition: a partition's users are folded in one pandas frame
# the Split layout of write_shards, column by column (the dataclass's field order)
SPLIT_DTYPES = {"user": np.int64, "item": np.int64, "ts": np.int64, "label": np.float32, "hist_start": np.int64,
                "hist_end": np.int64, "position": np.int64, "event_row": np.int64, "repeat": np.bool_}


def write_impression_shards_spark(cfg, out: str | Path, data: dict, dataset_meta: str | None,
                                  master: str = "local[2]") -> tuple[Path, dict]:
    """Build the impression samples of experiment `cfg` on Spark and write them as a shard folder at
    `out` (atomically, as write_shards). -> (the folder, its manifest)."""
    from edgerec.data import registry
    from edgerec.features.batch import spark_session

    if cfg.protocol != "impression":
        raise EdgerecError(f"--engine spark: protocol {cfg.protocol!r} draws negatives with numpy's generator over "
                           f"the whole log; build its shards with the default engine (drop --engine spark). "
                           f"Spark builds impression-protocol shards.")
    d = cfg.data
    check_split_fractions(d.split_fractions)
    folder = registry.prepare(cfg.dataset)
    ds = EventDataset.load(folder.parent, folder.name, events=False)  # the job reads the events itself
    spark = spark_session(master)
    with shard_folder(out) as tmp:
        manifest = _build(spark, folder / "events.parquet", ds, cfg, tmp, data, dataset_meta)
    return Path(out), manifest


def _build(spark, events_path: Path, ds: EventDataset, cfg, tmp: Path, data: dict, dataset_meta: str | None) -> dict:
    import pandas as pd
    from pyspark.sql import functions as F

    from edgerec.train.experiment import ID_MAPS

    d = cfg.data
    ev = spark.read.parquet(str(events_path)).select(
        "user_id", "item_id", "ts", "label", "position", F.col("_metadata.row_index").alias("event_row"))
    # row_index counts rows within a file: it is the in-memory event row because a prepared dataset's
    # events are one file (EventDataset.save)
    stats = ev.agg(F.count(F.lit(1)).alias("n"), F.count("position").alias("with_position"),
                   F.min("ts").alias("lo"), F.max("ts").alias("hi"),
                   F.max(F.coalesce("position", F.lit(0))).alias("max_position")).collect()[0]
    if stats["with_position"] == 0:
        raise ConfigError(no_positions_message(ds.name))
    user_vocab = _distinct_sorted(ev, "user_id")
    item_vocab = _distinct_sorted(ev, "item_id")
    if ds.items is not None:
        item_vocab = np.union1d(item_vocab, ds.items.column("item_id").to_numpy())
    t1, t2 = time_cuts(stats["lo"], stats["hi"], tuple(d.split_fractions))
    n_pos = int(d.max_position or stats["max_position"])
    n_items = len(item_vocab)
    vocabs = spark.sparkContext.broadcast((user_vocab, item_vocab))  # once per executor, not in every task

    def fold(batches):  # on the executors: one partition = whole users, through the in-memory code
        user_vocab, item_vocab = vocabs.value  # local names: the closure then pickles the handle, not the arrays
        frames = list(batches)
        if not frames:  # an empty partition (a cluster's many shuffle partitions, few users)
            return
        pdf = pd.concat(frames, ignore_index=True)
        if not len(pdf):
            return
        user = _index(pdf["user_id"].to_numpy(), user_vocab)
        item = _index(pdf["item_id"].to_numpy(), item_vocab)
        ts = pdf["ts"].to_numpy().astype(np.int64)
        label = pdf["label"].to_numpy().astype(np.float32)
        row = pdf["event_row"].to_numpy().astype(np.int64)
        position = np.minimum(pdf["position"].fillna(0).to_numpy().astype(np.int64), n_pos)
        c_order, hist_start, hist_end, repeat = click_history(user, item, ts, label, row, n_items)
        first = np.searchsorted(user[c_order], user[c_order], side="left")  # each click's user's first store row
        n_s, n_c = len(ts), len(c_order)
        yield pd.DataFrame({
            "kind": np.r_[np.full(n_s, SAMPLE, np.int8), np.full(n_c, STORED, np.int8)],
            "user": np.r_[user, user[c_order]], "item": np.r_[item, item[c_order]], "ts": np.r_[ts, ts[c_order]],
            "label": np.r_[label, label[c_order]], "position": np.r_[position, position[c_order]],
            "event_row": np.r_[row, row[c_order]],
            "split": np.r_[split_of(ts, t1, t2), np.zeros(n_c, np.int64)].astype(np.int8),
            "rank": np.r_[hist_end - hist_start, np.arange(n_c) - first],
            "repeat": np.r_[repeat, np.zeros(n_c, bool)]})

    folded_dir = tmp / "_spark" / "folded"
    parts = max(int(spark.conf.get("spark.sql.shuffle.partitions")), -(-stats["n"] // ROWS_PER_PARTITION))
    try:
        (ev.repartition(parts, "user_id").mapInPandas(fold, schema=FOLDED_SCHEMA)
         .write.mode("overwrite").parquet(str(folded_dir)))
    finally:
        vocabs.destroy()  # a long-lived session would otherwise keep every job's copy
    folded = spark.read.parquet(str(folded_dir))
    samples, stored = folded.where(F.col("kind") == SAMPLE), folded.where(F.col("kind") == STORED)

    per_user = _collect(stored.groupBy("user").count(), "user", "count", len(user_vocab) + 1)
    offset = np.r_[0, np.cumsum(per_user)]  # (n_users + 2,) offset[u]: store rows of users before index u
    train = samples.where(F.col("split") == 0)
    train_counts = _collect(train.groupBy("item").count(), "item", "count", n_items + 1)[1:]  # (V,) items 1..V
    train_users = np.flatnonzero(_collect(train.groupBy("user").count(), "user", "count", len(user_vocab) + 1))
    remap, kept_vocab = None, item_vocab
    if d.max_items is not None and d.max_items < n_items:
        keep, remap = cap_remap(train_counts, d.max_items)
        kept_vocab = item_vocab[keep]
    train_items = np.flatnonzero(train_counts) + 1
    train_items = np.unique(remap[train_items]) if remap is not None else train_items
    spec, item_feats, user_feats = impression_spec(ds, kept_vocab, user_vocab, train_items, train_users,
                                                   d.item_features, d.user_features, d.max_len, n_pos)

    rows, per_split, capped_samples = {}, {}, 0
    for i, name in enumerate(SPLITS):
        part = tmp / "_spark" / name
        (samples.where(F.col("split") == i).orderBy("event_row").drop("kind", "split")
         .write.mode("overwrite").parquet(str(part)))
        rows[name], clicks, capped = _write_split(part, tmp / f"{name}.parquet", offset, remap, d.rows_per_group,
                                                  spec.oov_item)
        per_split[name] = (rows[name], clicks)
        capped_samples += capped
    store_rows = int(offset[-1])
    capped_history = _write_store(folded_dir, tmp, offset, remap, store_rows, ds.tz, spec.oov_item, store_dtypes(spec))
    cap = {}
    if remap is not None:
        cap = cap_info(n_items, d.max_items, len(kept_vocab), capped_samples, sum(rows.values()),
                       capped_history, store_rows)
    info = impression_info(len(user_vocab), len(kept_vocab), t1, t2, cap, per_split)
    shutil.rmtree(tmp / "_spark")
    write_vocabularies(tmp, kept_vocab, user_vocab, item_feats, user_feats,
                       {k: ds.extras[k] for k in ID_MAPS if k in ds.extras} or None)
    write_manifest(tmp, spec, "impression", info, data, dataset_meta, d.rows_per_group, rows, store_rows,
                   cfg.train.seed, list(item_feats), list(user_feats))
    return json.loads((tmp / "manifest.json").read_text())


def _distinct_sorted(df, col: str) -> np.ndarray:
    """The sorted distinct values of a column, collected (catalogue-sized)."""
    return np.sort(df.select(col).distinct().toArrow().column(col).to_numpy())


def _collect(df, key: str, value: str, size: int) -> np.ndarray:
    """A (key, value) aggregate collected into a dense (size,) array indexed by key."""
    t = df.toArrow()
    out = np.zeros(size, np.int64)
    out[t.column(key).to_numpy()] = t.column(value).to_numpy()
    return out


def _parts(folder: Path) -> list[Path]:
    """Spark's part files in partition order (the order of a sorted write)."""
    return sorted(folder.glob("part-*.parquet"))


def _write_split(part: Path, out: Path, offset: np.ndarray, remap: np.ndarray | None, rows_per_group: int,
                 oov: int) -> tuple[int, float, int]:
    """Stream one split's sorted Spark output into `out` in the Split layout, in row groups of exactly
    `rows_per_group` rows as write_shards writes them. -> (rows, clicks, samples in the capped OOV index)."""
    schema = pa.schema([(k, pa.from_numpy_dtype(v)) for k, v in SPLIT_DTYPES.items()])
    pending: list[pa.Table] = []
    n, clicks, capped, last = 0, 0.0, 0, -1
    with pq.ParquetWriter(out, schema) as w:
        for f in _parts(part):
            for b in pq.ParquetFile(f).iter_batches(batch_size=rows_per_group):
                c = {k: b.column(k).to_numpy(zero_copy_only=False) for k in b.schema.names}
                if len(c["event_row"]) and (c["event_row"][0] <= last or np.any(np.diff(c["event_row"]) <= 0)):
                    raise EdgerecError(f"{part}: Spark's output is not in event order; the shards would differ "
                                       f"from the in-memory ones (please report this)")
                last = int(c["event_row"][-1]) if len(c["event_row"]) else last
                start = offset[c["user"]]
                item = remap[c["item"]] if remap is not None else c["item"]
                capped += int((item == oov).sum()) if remap is not None else 0
                cols = {"user": c["user"], "item": item, "ts": c["ts"], "label": c["label"], "hist_start": start,
                        "hist_end": start + c["rank"], "position": c["position"], "event_row": c["event_row"],
                        "repeat": c["repeat"]}
                pending.append(pa.table({k: np.asarray(v, dtype=SPLIT_DTYPES[k]) for k, v in cols.items()},
                                        schema=schema))
                n += len(b)
                clicks += float(c["label"].sum())
                pending = _flush(w, pending, rows_per_group, final=False)
        _flush(w, pending, rows_per_group, final=True)
        if n == 0:  # an empty split: the same (empty) file as pq.write_table of an empty table
            w.write_table(schema.empty_table(), row_group_size=rows_per_group)
    return n, clicks, capped


def _flush(w: pq.ParquetWriter, pending: list[pa.Table], rows_per_group: int, final: bool) -> list[pa.Table]:
    """Write every full row group of `pending` (and the rest when final); -> what is left."""
    t = pa.concat_tables(pending) if pending else None
    if t is None:
        return []
    full = len(t) // rows_per_group * rows_per_group
    if full:
        w.write_table(t.slice(0, full), row_group_size=rows_per_group)
    rest = t.slice(full)
    if final and len(rest):
        w.write_table(rest, row_group_size=rows_per_group)
        return []
    return [rest] if len(rest) else []


def _write_store(folded_dir: Path, tmp: Path, offset: np.ndarray, remap: np.ndarray | None, n: int, tz: str,
                 oov: int, dtypes: dict[str, type]) -> int:
    """Scatter the stored clicks (any order) into the memory-mapped store arrays at offset[user] + rank.
    -> how many stored clicks fell into the capped OOV index."""
    from numpy.lib.format import open_memmap

    clock = local_clock(tz)
    arrays = {name: open_memmap(tmp / f"{name}.npy", "w+", dtype, (n,)) for name, dtype in dtypes.items()}
    capped, written = 0, 0
    for f in _parts(folded_dir):
        pf = pq.ParquetFile(f)
        for b in pf.iter_batches(batch_size=65536, columns=["kind", "user", "item", "ts", "position", "rank"]):
            c = {k: b.column(k).to_numpy(zero_copy_only=False) for k in b.schema.names}
            m = c["kind"] == STORED
            at = offset[c["user"][m]] + c["rank"][m]
            item = remap[c["item"][m]] if remap is not None else c["item"][m]
            capped += int((item == oov).sum()) if remap is not None else 0
            local = clock.local(c["ts"][m])
            arrays["store_item"][at] = item
            arrays["store_local_ts"][at] = local
            arrays["store_slots"][at] = pack_slots(local)
            arrays["store_position"][at] = c["position"][m]
            written += int(m.sum())
    if written != n:
        raise EdgerecError(f"Spark's output has {written:,} stored clicks, the per-user counts {n:,} (please report this)")
    for a in arrays.values():
        a.flush()
    return capped
