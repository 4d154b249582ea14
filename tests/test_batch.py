"""`edgerec batch`: polars and Spark write identical tables, and both equal the stream's fold."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from edgerec.errors import ConfigError, DataFormatError
from edgerec.features.batch import events_table, read_event_file, run_batch, spark_session
from edgerec.features.definition import FeatureDefinition
from edgerec.features.store import MemoryStore
from edgerec.features.time import SECONDS_PER_DAY
from edgerec.serve.stream import events_from_log, write_event_file

DEF = FeatureDefinition(max_len=10, n_positions=6)


@pytest.fixture(scope="module")
def log_events(tiny_sim):
    return list(events_from_log(tiny_sim.dataset.events))


@pytest.fixture(scope="module")
def polars_out(log_events, tmp_path_factory):
    return run_batch(events_table(log_events), tmp_path_factory.mktemp("polars"), DEF, "polars")


def test_daily_snapshots_and_item_counts_equal_the_stream_fold(log_events, polars_out):
    users = pq.read_table(polars_out["user_features"]).to_pylist()
    items = pq.read_table(polars_out["item_features"]).to_pylist()
    days = sorted({e.ts // SECONDS_PER_DAY for e in log_events})
    store, k = MemoryStore(), 0
    for day in days[:4]:  # replay the stream day by day and compare with the batch snapshots of that day
        end = (day + 1) * SECONDS_PER_DAY
        todays = []
        while k < len(log_events) and log_events[k].ts < end:
            todays.append(log_events[k])
            k += 1
        store.apply(todays, DEF)
        for row in (r for r in users if r["day"] == day):
            s = store.user(row["user_id"])
            assert (row["hist_item"], row["hist_ts"], row["slot_clicks"], row["clicks"], row["exposures"]) == \
                (s.recent_item, s.recent_ts, s.slot_clicks, s.clicks, s.exposures)
        for row in (r for r in items if r["day"] == day):
            s = store.item(row["item_id"])
            assert (row["exposures"], row["clicks"]) == (s.exposures, s.clicks)


def test_samples_are_the_logged_exposures_with_features_strictly_before_them(tiny_sim, polars_out):
    samples = pq.read_table(polars_out["samples"])
    log = tiny_sim.dataset.events
    assert samples.num_rows == log.num_rows  # one row per exposure, none lost
    assert sum(samples.column("label").to_pylist()) == sum(log.column("label").to_pylist())
    for row in samples.slice(0, 3000).to_pylist():
        assert all(t < row["ts"] for t in row["hist_ts"])
        assert len(row["hist_item"]) <= DEF.max_len


def test_spark_writes_the_same_tables_as_polars(log_events, polars_out, tmp_path):
    pytest.importorskip("pyspark")
    spark_out = run_batch(events_table(log_events), tmp_path / "spark", DEF, "spark", "local[2]")
    for name, path in polars_out.items():
        a, b = pq.read_table(path), pq.read_table(spark_out[name])
        assert a.schema == b.schema and a.num_rows == b.num_rows
        assert a.equals(b), name
    with pytest.raises(ConfigError, match=r"--spark-master local\[1\]: this process already runs a Spark session on "
                                          r"local\[2\]"):  # getOrCreate would hand back local[2] and ignore it
        spark_session("local[1]")


def test_malformed_event_line_stops_the_batch_with_its_line_number(tmp_path, log_events):
    path = write_event_file(log_events[:20], tmp_path / "ev.jsonl")
    lines = path.read_text().splitlines()
    lines[6] = json.dumps({**json.loads(lines[6]), "kind": "purchase"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"ev.jsonl line 7: kind 'purchase'"):
        read_event_file(path)


def test_cli_batch_writes_parquet(tmp_path, capsys):
    from edgerec.cli import main

    assert main(["batch", "--dataset", "o2o-sim:tiny", "--out", str(tmp_path / "b"), "--max-len", "10"]) == 0
    out = capsys.readouterr().out
    assert "samples" in out and (tmp_path / "b" / "samples.parquet").exists()
    assert not list((tmp_path / "b").glob(".*tmp"))  # no half-written artifact left behind


def test_a_resent_event_is_folded_once_like_the_stream(tmp_path):
    """The feedback sink may write an event twice (a client retry); the stream's store applies it once,
    so the batch job must fold it once too, or batch and stream features drift apart."""
    import json

    from edgerec.features.definition import Event

    e = Event("same", 1, 2, 1_770_000_000, "click", 1).to_dict()
    path = tmp_path / "ev.jsonl"
    path.write_text(json.dumps(e) + "\n" + json.dumps(e) + "\n" + json.dumps({**e, "event_id": "other"}) + "\n")
    assert read_event_file(path).column("event_id").to_pylist() == ["same", "other"]


def test_batch_leaves_out_what_the_stream_dead_letters_as_late(tmp_path, capsys):
    """Review of issue 20: the batch folded events the stream dead-letters as older than its dedup
    window, so batch and online features differed for the same log."""
    import json

    from edgerec.cli import main
    from edgerec.features.definition import Event, FeatureDefinition
    from edgerec.features.store import SQLiteStore
    from edgerec.serve.stream import FileEventSource, run_stream

    t = 1_770_000_000
    evs = [Event("new", 1, 2, t + 10 * 86400, "click"), Event("old", 1, 3, t, "click"), Event("b", 1, 4, t + 9 * 86400,
                                                                                              "click")]
    path = tmp_path / "ev.jsonl"
    path.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in evs))
    late: list = []
    assert read_event_file(path, late=late).column("event_id").to_pylist() == ["new", "b"]
    assert [e.event_id for e in late] == ["old"]
    store = SQLiteStore(tmp_path / "s.db")
    stats = run_stream(FileEventSource(path), store, FeatureDefinition(max_len=10, n_positions=6), batch_size=1)
    assert (stats.applied, stats.late) == (2, 1)  # the same two events
    assert read_event_file(path, dedup_window_s=None).num_rows == 3
    # a far-future event is left out like the stream's future dead letter, and moves nothing
    import time

    now = int(time.time())
    fut = [Event("a", 1, 2, now - 1000, "click"), Event("fut", 1, 2, 4_000_000_000, "click"),
           Event("b", 1, 2, now - 900, "click")]
    path.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in fut))
    late = []
    assert read_event_file(path, late=late, future_skew_s=86400).column("event_id").to_pylist() == ["a", "b"]
    assert len(late) == 1
    path.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in evs))
    assert main(["batch", "--events", str(path), "--out", str(tmp_path / "out")]) == 0
    assert "1 event(s) of" in capsys.readouterr().err
