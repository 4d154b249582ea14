"""`edgerec batch`: daily features and training samples from the event log, on polars or Spark (issue 5).

Outputs (Parquet, one file each, written to a temp name then renamed):

  user_features.parquet  (user_id, day) -> the user's folded state at the END of that UTC day
                         (recent clicks with times and positions, 168 hour-of-week click counts,
                         clicks per display position, exposures, clicks)
  item_features.parquet  (item_id, day) -> cumulative exposures and clicks to the end of the day
  samples.parquet        one row per exposure: label (clicked in the same request), position, and the
                         user's features strictly BEFORE the exposure's second (what serving reads)

Why the user side is a Python fold on both engines: the feature definition is `FeatureDefinition`,
the fold the stream processor and serving also use. Re-expressing it as dataframe expressions would
be a second definition that can drift; here the engines do what they are good at (partitioning by
user, sorting, IO, the item aggregates) and call the ONE fold per user: polars with `partition_by`,
Spark with `groupBy(user_id).applyInPandas`. A test checks both engines write identical files and
that the item aggregates equal the fold's `apply_item`.

Input: events in the wire schema (event_id, user_id, item_id, ts, kind, position, request_id), in
the order they were logged (`seq`); per user, that order is the stream's order too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from edgerec.errors import ConfigError
from edgerec.features.definition import Event, FeatureDefinition, UserState, cut, hour_of_week
from edgerec.features.store import DEFAULT_DEDUP_WINDOW_S
from edgerec.features.time import SECONDS_PER_DAY, local_clock
from edgerec.io import atomic_path

ENGINES = ("polars", "spark")

EVENT_SCHEMA = pa.schema([("seq", pa.int64()), ("event_id", pa.string()), ("user_id", pa.int64()),
                          ("item_id", pa.int64()), ("ts", pa.int64()), ("kind", pa.string()),
                          ("position", pa.int64()), ("request_id", pa.int64())])
_L = pa.list_(pa.int64())
USER_SCHEMA = pa.schema([("user_id", pa.int64()), ("day", pa.int64()), ("hist_item", _L), ("hist_ts", _L),
                         ("hist_position", _L), ("slot_clicks", _L), ("position_clicks", _L),
                         ("exposures", pa.int64()), ("clicks", pa.int64())])
SAMPLE_SCHEMA = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("ts", pa.int64()), ("day", pa.int64()),
                           ("position", pa.int64()), ("request_id", pa.int64()), ("label", pa.int8()),
                           ("hist_item", _L), ("hist_ts", _L), ("hist_position", _L),
                           ("user_clicks", pa.int64()), ("user_exposures", pa.int64()),
                           ("slot_clicks_now", pa.int64())])
ITEM_SCHEMA = pa.schema([("item_id", pa.int64()), ("day", pa.int64()), ("exposures", pa.int64()),
                         ("clicks", pa.int64())])


def events_table(events: Iterable[Event]) -> pa.Table:
    """Wire events -> the batch input table (`seq` = arrival order)."""
    cols: dict[str, list] = {f.name: [] for f in EVENT_SCHEMA}
    for i, e in enumerate(events):
        cols["seq"].append(i)
        for k in ("event_id", "user_id", "item_id", "ts", "kind", "position", "request_id"):
            cols[k].append(getattr(e, k))
    return pa.table(cols, schema=EVENT_SCHEMA)


def read_event_file(path: str | Path, dedup_window_s: int | None = DEFAULT_DEDUP_WINDOW_S,
                    late: list | None = None, future_skew_s: int | None = None) -> pa.Table:
    """A JSON-lines event file (what `edgerec stream` consumes) -> the batch input table. A line that
    is not a valid event (the stream's `decode`, THE event validator; no future bound: a batch is
    offline) stops the job with its line number: a batch that silently skipped rows would train on a
    different log than the one the stream applied. For the same reason the stream's store rules
    apply, in arrival order: a resent event (an event_id seen before, as the feedback sink may write)
    is folded once, and an event older than the newest one folded minus `dedup_window_s` (what the
    stream dead-letters as late, `LateGate`) is left out and appended to `late` (edgerec batch
    reports the count; `--dedup-days 0` folds every event). With `future_skew_s`, an event later
    than the clock plus that skew is left out and appended to `late` too, as the stream dead-letters
    it (without the bound, one such event would make every later one look late)."""
    from edgerec.features.definition import FutureEventError, latest_accepted_ts
    from edgerec.features.store import LateGate
    from edgerec.serve.stream import decode

    latest = latest_accepted_ts(future_skew_s)

    def gen():
        seen: set[str] = set()
        gate = LateGate(None, dedup_window_s, on_late=lambda e, reason: late.append(e) if late is not None else None)
        with open(path, "rb") as f:  # bytes: a line of bad UTF-8 is an error naming its line
            for i, line in enumerate(f):
                if line.strip():
                    try:
                        e = decode(line, f"{path} line {i + 1}", latest)
                    except FutureEventError:
                        if late is not None:
                            late.append(line)
                        continue
                    if gate.admits(e) and e.event_id not in seen:
                        seen.add(e.event_id)
                        gate.applied(e)
                        yield e

    return events_table(gen())


def with_local_day(events: pa.Table, tz: str) -> pa.Table:
    """Adds `local_day`: days since 1970 on the dataset's local clock, so a day's snapshot ends at
    local midnight (the same cut for the user fold and the item counts, on both engines)."""
    import numpy as np

    local = local_clock(tz).local(events.column("ts").to_numpy().astype(np.int64))
    return events.append_column("local_day", pa.array(local // SECONDS_PER_DAY))


def fold_user(rows: dict[str, list], definition: FeatureDefinition) -> tuple[dict, dict]:
    """ONE user's events (sorted by ts, then seq) -> (daily snapshot rows, sample rows), column-wise.

    Events sharing a second are applied together, after the samples of that second were read: an
    exposure never sees a click logged in its own second (serving cannot either)."""
    user_id = rows["user_id"][0]
    state = UserState()
    snaps: dict[str, list] = {f.name: [] for f in USER_SCHEMA}
    samples: dict[str, list] = {f.name: [] for f in SAMPLE_SCHEMA}
    n = len(rows["ts"])
    local_day = rows["local_day"]  # the definition's local day of each event (with_local_day)
    i = 0
    while i < n:
        t = rows["ts"][i]
        j = i
        while j < n and rows["ts"][j] == t:
            j += 1
        group = [Event(rows["event_id"][k], user_id, rows["item_id"][k], t, rows["kind"][k],
                       rows["position"][k], rows["request_id"][k]) for k in range(i, j)]
        clicked = {(e.item_id, e.request_id) for e in group if e.kind == "click"}
        feats = None
        for e in group:
            if e.kind != "exposure":
                continue
            feats = feats or definition.user_features(state, t)
            for k, v in (("user_id", user_id), ("item_id", e.item_id), ("ts", t), ("day", local_day[i]),
                         ("position", e.position), ("request_id", e.request_id),
                         ("label", int((e.item_id, e.request_id) in clicked)),
                         ("hist_item", feats["hist_item"]), ("hist_ts", feats["hist_ts"]),
                         ("hist_position", feats["hist_position"]), ("user_clicks", state.clicks),
                         ("user_exposures", state.exposures),
                         ("slot_clicks_now", state.slot_clicks[hour_of_week(t, definition.tz)])):
                samples[k].append(v)
        for e in group:
            definition.apply_user(state, e)
        day = local_day[i]
        if j == n or local_day[j] != day:  # end of this user's (local) day: snapshot
            d = state.to_dict()
            for k, v in (("user_id", user_id), ("day", day), ("hist_item", d["recent_item"]),
                         ("hist_ts", d["recent_ts"]), ("hist_position", d["recent_position"]),
                         ("slot_clicks", d["slot_clicks"]), ("position_clicks", d["position_clicks"]),
                         ("exposures", d["exposures"]), ("clicks", d["clicks"])):
                snaps[k].append(list(v) if isinstance(v, list) else v)
        i = j
    return snaps, samples


def _concat(parts: list[dict], schema: pa.Schema) -> pa.Table:
    cols = {f.name: [v for p in parts for v in p[f.name]] for f in schema}
    return pa.table(cols, schema=schema)


def _sorted(t: pa.Table, keys: list[str]) -> pa.Table:
    return t.sort_by([(k, "ascending") for k in keys])


# ---- polars (embedded default) ------------------------------------------------------------------
def _run_polars(events: pa.Table, definition: FeatureDefinition) -> dict[str, pa.Table]:
    import polars as pl

    df = pl.from_arrow(events).sort(["user_id", "ts", "seq"])
    snaps, samples = [], []
    for part in df.partition_by("user_id", maintain_order=True):
        s, x = fold_user(part.to_dict(as_series=False), definition)
        snaps.append(s)
        samples.append(x)
    items = (df.with_columns(pl.col("local_day").alias("day"))
             .group_by(["item_id", "day"])
             .agg((pl.col("kind") == "exposure").sum().cast(pl.Int64).alias("exposures"),
                  (pl.col("kind") == "click").sum().cast(pl.Int64).alias("clicks"))
             .sort(["item_id", "day"])
             .with_columns(pl.col("exposures").cum_sum().over("item_id"), pl.col("clicks").cum_sum().over("item_id")))
    return {"user_features": _sorted(_concat(snaps, USER_SCHEMA), ["user_id", "day"]),
            "samples": _sorted(_concat(samples, SAMPLE_SCHEMA), ["user_id", "ts", "request_id", "item_id"]),
            "item_features": items.to_arrow().cast(ITEM_SCHEMA)}


# ---- Spark ------------------------------------------------------------------------------------
def spark_session(master: str = "local[2]"):
    """The Spark session of `master`: local[N] (tests, `edgerec batch --engine spark`) or a cluster's
    URL (spark://, yarn, k8s://). A local session binds to 127.0.0.1; a cluster's executors must
    reach the driver, so its address is left to Spark. Spark keeps one session per process and
    getOrCreate would hand back an existing one whatever the master, so a different master is an
    error rather than silently ignored."""
    os.environ.setdefault("PYSPARK_PYTHON", os.environ.get("PYSPARK_PYTHON") or __import__("sys").executable)
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    running = SparkContext._active_spark_context  # process-wide (getActiveSession is per thread)
    if running is not None and running.master != master:
        raise ConfigError(f"--spark-master {master}: this process already runs a Spark session on "
                          f"{running.master}; use that master, or stop the session first")
    builder = (SparkSession.builder.master(master).appName("edgerec-batch")
               .config("spark.sql.shuffle.partitions", "4").config("spark.ui.enabled", "false")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    if master.startswith("local"):
        builder = builder.config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
    try:
        return builder.getOrCreate()
    except Exception as e:  # py4j's Java errors, a master URL Spark cannot parse, a master that never answers
        if SparkContext._active_spark_context is not None:
            SparkContext._active_spark_context.stop()
        reason = next((line.strip(" :") for line in reversed(str(e).splitlines()) if line.strip(" :")), type(e).__name__)
        raise ConfigError(f"--spark-master {master}: Spark could not start a session there ({cut(reason, 160)}); "
                          f"check the URL and that the master is running and reachable, or use local[N]") from None


def _run_spark(events: pa.Table, definition: FeatureDefinition, master: str) -> dict[str, pa.Table]:
    import pandas as pd
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    spark = spark_session(master)
    df = spark.createDataFrame(events.to_pandas())
    tag_schema = ("kind_of_row string, user_id long, item_id long, ts long, day long, position long, "
                  "request_id long, label byte, hist_item array<long>, hist_ts array<long>, "
                  "hist_position array<long>, slot_clicks array<long>, position_clicks array<long>, "
                  "exposures long, clicks long, user_clicks long, user_exposures long, slot_clicks_now long")

    tag_columns = [tuple(c.split()) for c in tag_schema.split(", ")]

    def per_user(pdf: pd.DataFrame) -> pd.DataFrame:  # runs on the executors: the same fold as polars
        pdf = pdf.sort_values(["ts", "seq"], kind="stable")
        rows = {c: [None if pd.isna(v) else v for v in pdf[c].tolist()] if c in ("position", "request_id")
                else pdf[c].tolist() for c in pdf.columns}
        parts = []
        for kind, cols in zip(("user", "sample"), fold_user(rows, definition)):
            n = len(cols["user_id"])
            for c, typ in tag_columns:  # the other kind's columns get fillers, dropped by `select` below
                if c not in cols:
                    cols[c] = [kind] * n if c == "kind_of_row" else [[] for _ in range(n)] \
                        if typ.startswith("array") else [0] * n
            parts.append(pd.DataFrame(cols)[[c for c, _ in tag_columns]])
        return pd.concat(parts, ignore_index=True)

    folded = df.groupBy("user_id").applyInPandas(per_user, schema=tag_schema).toArrow()
    user_cols = [f.name for f in USER_SCHEMA]
    sample_cols = [f.name for f in SAMPLE_SCHEMA]
    import pyarrow.compute as pc

    users = folded.filter(pc.equal(folded.column("kind_of_row"), "user")).select(user_cols).cast(USER_SCHEMA)
    samples = folded.filter(pc.equal(folded.column("kind_of_row"), "sample")).select(sample_cols).cast(SAMPLE_SCHEMA)
    w = Window.partitionBy("item_id").orderBy("day").rowsBetween(Window.unboundedPreceding, 0)
    items = (df.withColumn("day", F.col("local_day"))
             .groupBy("item_id", "day")
             .agg(F.sum((F.col("kind") == "exposure").cast("long")).alias("exposures"),
                  F.sum((F.col("kind") == "click").cast("long")).alias("clicks"))
             .withColumn("exposures", F.sum("exposures").over(w)).withColumn("clicks", F.sum("clicks").over(w))
             .toArrow())
    return {"user_features": _sorted(users, ["user_id", "day"]),
            "samples": _sorted(samples, ["user_id", "ts", "request_id", "item_id"]),
            "item_features": _sorted(items.select([f.name for f in ITEM_SCHEMA]).cast(ITEM_SCHEMA),
                                     ["item_id", "day"])}


def run_batch(events: pa.Table, out_dir: str | Path, definition: FeatureDefinition, engine: str = "polars",
              spark_master: str = "local[2]") -> dict[str, Path]:
    """Compute the three tables with `engine` and write them atomically under `out_dir`."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: choose one of {ENGINES}")
    events = events.cast(EVENT_SCHEMA)
    events = with_local_day(events, definition.tz)
    tables = _run_polars(events, definition) if engine == "polars" else _run_spark(events, definition, spark_master)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, table in tables.items():
        path = out_dir / f"{name}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        written[name] = path
    return written
