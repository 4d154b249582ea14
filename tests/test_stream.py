"""One feature definition, its stores and the stream processor: nothing lost, nothing counted twice."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerec.errors import DataFormatError
from edgerec.features.definition import Event, FeatureDefinition, hour_of_week
from edgerec.features.store import MemoryStore, SQLiteStore
from edgerec.serve.stream import FileEventSource, decode, events_from_log, run_stream, write_event_file
from tests.poison import EVENT_DICTS, POISON, to_line

DEF = FeatureDefinition(max_len=10, n_positions=6)


@pytest.fixture(scope="module")
def log_events(tiny_sim):
    return list(events_from_log(tiny_sim.dataset.events))


def _snapshot(store, users, items):
    return ({u: store.user(u).to_dict() for u in users}, {i: store.item(i).to_dict() for i in items})


def test_hour_of_week_starts_monday_midnight_utc_and_matches_time_slots():
    from edgerec.features.time import time_slots

    assert hour_of_week(1767571200) == 0  # 2026-01-05 00:00 UTC, a Monday
    assert hour_of_week(1767571200 + 4 * 86400 + 19 * 3600 + 59) == 4 * 24 + 19
    ts = np.random.default_rng(0).integers(0, 2_000_000_000, 500)
    s = time_slots(ts)
    assert [hour_of_week(int(t)) for t in ts] == (s["weekday"] * 24 + s["hour"]).tolist()


def test_clicks_keep_time_order_and_the_last_max_len():
    d, s = FeatureDefinition(max_len=3), MemoryStore()
    evs = [Event(f"e{k}", 1, 100 + k, 1000 + 10 * k, "click", 1) for k in (0, 2, 1, 4, 3)]
    s.apply(evs, d)
    u = s.user(1)
    # max_len clicks before the newest second, plus that second's: a request at 1040 sees 3 clicks
    assert u.recent_ts == [1010, 1020, 1030, 1040] and u.recent_item == [101, 102, 103, 104] and u.clicks == 5
    assert d.user_features(u, now=1041)["hist_item"] == [102, 103, 104]  # the last max_len
    assert d.user_features(u, now=1040)["hist_item"] == [101, 102, 103]  # strictly before the request
    assert d.user_features(u, now=1030)["hist_item"] == [101, 102]
    s.apply([Event("e5", 1, 105, 1040, "click", 1), Event("e6", 1, 106, 1050, "click", 1)], d)
    assert s.user(1).recent_ts == [1030, 1040, 1040, 1050]  # the bound holds as time moves on
    s.apply([Event(f"f{k}", 1, 200 + k, 1060, "click", 1) for k in range(10)], d)  # a flood in one second
    u = s.user(1)
    assert u.recent_ts == [1040, 1040, 1050, 1060, 1060, 1060] and u.recent_item[-3:] == [207, 208, 209]


def test_replaying_every_event_changes_nothing(tmp_path, log_events):
    users = {e.user_id for e in log_events}
    items = {e.item_id for e in log_events}
    once = SQLiteStore(tmp_path / "once.db")
    once.apply(log_events, DEF)
    twice = SQLiteStore(tmp_path / "twice.db", dedup_window_s=None)  # keeps every id: replays of any age
    assert twice.apply(log_events, DEF) == len(log_events)
    assert twice.apply(log_events[::-1], DEF) == 0  # all duplicates
    assert _snapshot(once, users, items) == _snapshot(twice, users, items)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_dedup_window_bounds_the_kept_ids_and_never_applies_a_late_event(tmp_path, log_events, kind):
    from edgerec.features.store import LateEventError

    window = 2 * 86400
    store = MemoryStore(window) if kind == "memory" else SQLiteStore(tmp_path / "w.db", window)
    for k in range(0, len(log_events), 500):
        store.apply(log_events[k:k + 500], DEF)
    newest = max(e.ts for e in log_events)
    inside = {e.event_id for e in log_events if e.ts >= newest - window}
    kept = (set(store.applied) if kind == "memory"
            else {r[0] for r in store.db.execute("SELECT event_id FROM applied")})
    assert kept == inside and len(inside) < len(log_events) / 2  # bounded: the last 2 of 14 days
    users, items = {e.user_id for e in log_events}, {e.item_id for e in log_events}
    before = _snapshot(store, users, items)
    late = []
    assert store.apply(log_events, DEF, on_late=lambda e, why: late.append(e)) == 0  # a full replay
    assert {e.event_id for e in late} == {e.event_id for e in log_events} - inside
    with pytest.raises(LateEventError, match=rf"event '{log_events[0].event_id}' .* dedup window"):
        store.apply(log_events[:1], DEF)  # no on_late: a clear error, nothing applied
    assert _snapshot(store, users, items) == before


def test_a_store_written_before_the_dedup_window_keeps_its_old_ids(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE applied (event_id TEXT PRIMARY KEY); INSERT INTO applied VALUES ('old');")
    db.close()
    store = SQLiteStore(path, dedup_window_s=3600)
    assert store.apply([Event("new", 1, 2, 10 ** 9, "click", 1)], DEF) == 1
    assert store.apply([Event("old", 1, 2, 10 ** 9 + 10 ** 6, "click", 1)], DEF) == 0  # still a duplicate
    assert store.db.execute("SELECT COUNT(*) FROM applied").fetchone()[0] == 2  # 'new' is within the hour
    assert store.apply([Event("newer", 1, 2, 10 ** 9 + 10 ** 5, "click", 1)], DEF) == 1
    ids = {r[0] for r in store.db.execute("SELECT event_id FROM applied")}
    assert ids == {"old", "newer"}  # 'new' pruned; the pre-window id (ts NULL) is never pruned


def test_stream_cli_rejects_a_negative_dedup_window(tmp_path, capsys):
    from edgerec.cli import main

    (tmp_path / "ev.jsonl").write_text("")
    assert main(["stream", "--events", str(tmp_path / "ev.jsonl"), "--store", "memory", "--dedup-days", "-1"]) != 0
    assert "--dedup-days must be a finite number >= 0" in capsys.readouterr().err


def test_memory_and_sqlite_and_batch_fold_agree(tmp_path, log_events):
    mem, sql = MemoryStore(), SQLiteStore(tmp_path / "s.db")
    mem.apply(log_events, DEF)
    for k in range(0, len(log_events), 777):  # streamed in uneven batches
        sql.apply(log_events[k:k + 777], DEF)
    users = {e.user_id for e in log_events}
    items = {e.item_id for e in log_events}
    assert _snapshot(mem, users, items) == _snapshot(sql, users, items)
    clicks = sum(e.kind == "click" for e in log_events)
    assert sum(mem.user(u).clicks for u in users) == clicks  # every click counted exactly once
    # the bulk read of the serving path (SQL-side field extraction) equals the one-by-one read
    ids = sorted(items)[:600] + [max(items) + 1]  # > 500: two SQL chunks; plus an unknown item
    assert sql.items(ids) == [sql.item(i) for i in ids] == mem.items(ids)
    assert sql.items(ids)[-1].exposures == 0
    # stage 1's counts (SQLite: the item_counts table its triggers keep) equal the states, in id order
    want = (np.array([s.exposures for s in mem.items(ids)]), np.array([s.clicks for s in mem.items(ids)]))
    for store in (sql, mem):
        got = store.item_counts(ids[::-1])
        np.testing.assert_array_equal(got[0], want[0][::-1])
        np.testing.assert_array_equal(got[1], want[1][::-1])


def test_a_store_written_before_item_counts_gets_them_and_an_old_writer_keeps_them(tmp_path, log_events):
    """A store from before `item_counts` is filled when opened; a writer that knows nothing of it (an
    older edgerec's stream: INSERT OR REPLACE INTO items) keeps it current through the triggers."""
    import sqlite3

    path = tmp_path / "old.db"
    SQLiteStore(path).apply(log_events[:3000], DEF)
    db = sqlite3.connect(path)
    db.executescript("DROP TRIGGER item_counts_insert; DROP TRIGGER item_counts_update; "
                     "DROP TRIGGER item_counts_delete; DROP TABLE item_counts;")  # as an older edgerec wrote it
    db.close()
    store = SQLiteStore(path)
    ids = sorted({e.item_id for e in log_events[:3000]})
    assert store.item_counts(ids)[0].tolist() == [s.exposures for s in store.items(ids)]
    assert sum(store.item_counts(ids)[0]) > 0
    store.db.execute("INSERT OR REPLACE INTO items VALUES (?, ?)", (ids[0], json.dumps({"exposures": 7, "clicks": 3})))
    exposures, clicks = store.item_counts(ids[:1])
    assert (exposures[0], clicks[0]) == (7, 3)
    store.db.execute("DELETE FROM items WHERE item_id = ?", (ids[0],))
    exposures, clicks = store.item_counts(ids[:1])
    assert (exposures[0], clicks[0]) == (0, 0)
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER item_counts_update")  # a store that lost a trigger is repaired when opened
    db.close()
    assert SQLiteStore(path)._has_item_counts()


def test_an_older_store_locked_by_another_writer_is_a_retry_not_a_config_error(tmp_path, log_events):
    """Filling item_counts needs the write lock: while another process holds it (past sqlite3's 5 s
    wait), opening says the store is fine and busy, not that it is not a feature store."""
    import sqlite3

    from edgerec.errors import StoreUnavailable

    path = tmp_path / "old.db"
    SQLiteStore(path).apply(log_events[:100], DEF)
    other = sqlite3.connect(path, isolation_level=None)
    other.executescript("DROP TABLE item_counts;")
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailable, match="locked by another writer"):
        SQLiteStore(path)
    other.execute("ROLLBACK")
    assert SQLiteStore(path)._has_item_counts()


class Crash(Exception):
    pass


def test_consumer_killed_midway_then_restarted_loses_and_doubles_nothing(tmp_path, log_events):
    path = write_event_file(log_events, tmp_path / "events.jsonl")
    src = FileEventSource(path)
    ref = MemoryStore()
    ref.apply(log_events, DEF)

    store = SQLiteStore(tmp_path / "crash.db")
    real_apply = store.apply
    calls = {"n": 0}

    def flaky(events, definition, source=None, offset=None, **kw):  # dies inside the 4th batch's transaction
        calls["n"] += 1
        if calls["n"] == 4:
            store.db.execute("BEGIN IMMEDIATE")
            store.db.execute("INSERT INTO applied VALUES ('half-written', 0, '')")
            store.db.execute("ROLLBACK")
            raise Crash()
        return real_apply(events, definition, source, offset, **kw)

    store.apply = flaky
    with pytest.raises(Crash):
        run_stream(src, store, DEF, batch_size=1000)
    committed = store.offset(src.name)
    assert committed == 2999  # three batches committed, the fourth rolled back
    store.apply = real_apply
    stats = run_stream(src, store, DEF, batch_size=1000)  # restart: resumes after the committed offset
    assert stats.read == len(log_events) - 3000 and stats.duplicates == 0
    # a full replay from offset 0 (e.g. a consumer group reset) is absorbed: events inside the dedup
    # window by their ids, older ones (too old to check) by the dead-letter file, none applied twice
    fresh = FileEventSource(path)
    store.db.execute("DELETE FROM offsets")
    again = run_stream(fresh, store, DEF, batch_size=1000)
    cutoff = max(e.ts for e in log_events) - store.dedup_window_s
    n_old = sum(e.ts < cutoff for e in log_events)
    assert n_old > 0 and again.applied == 0
    assert (again.late, again.rejected, again.duplicates) == (n_old, n_old, len(log_events) - n_old)
    dead = [json.loads(x) for x in fresh.dead_letter().read_text().splitlines()]
    assert len(dead) == n_old and "dedup window" in dead[0]["error"] and "--dedup-days" in dead[0]["error"]
    users = {e.user_id for e in log_events}
    items = {e.item_id for e in log_events}
    assert _snapshot(store, users, items) == _snapshot(ref, users, items)


def test_malformed_messages_go_to_the_dead_letter_file(tmp_path):
    path = tmp_path / "ev.jsonl"
    good = Event("a", 1, 2, 1000, "click", 3).to_dict()
    path.write_text("\n".join([json.dumps(good), "{not json", json.dumps({**good, "event_id": "b", "kind": "buy"}),
                               json.dumps({**good, "event_id": "c", "ts": "yesterday"}),
                               json.dumps({**good, "event_id": "d"})]) + "\n")
    store = MemoryStore()
    stats = run_stream(FileEventSource(path), store, DEF)
    assert (stats.read, stats.applied, stats.rejected) == (5, 2, 3)
    rejected = [json.loads(x) for x in (tmp_path / "ev.rejected.jsonl").read_text().splitlines()]
    assert [r["offset"] for r in rejected] == [1, 2, 3]
    assert "not JSON" in rejected[0]["error"] and "kind 'buy'" in rejected[1]["error"]
    assert "must be integers" in rejected[2]["error"]


def test_event_validation_names_the_field():
    with pytest.raises(DataFormatError, match=r"missing field\(s\) \['ts'\]"):
        Event.from_dict({"event_id": "x", "user_id": 1, "item_id": 2, "kind": "click"})
    with pytest.raises(DataFormatError, match="position 0 is out of range: position must be a 1-based"):
        Event.from_dict({"event_id": "x", "user_id": 1, "item_id": 2, "ts": 5, "kind": "click", "position": 0})


def test_served_history_equals_the_training_history(tiny_sim, log_events):
    """The feature definition and the sample builder agree event by event: for test samples, the
    history served from the store (fed every event before the request) is the training history."""
    from edgerec.data.samples import build_impressions

    s = build_impressions(tiny_sim.dataset, max_len=10)
    sp = s.splits["test"]
    rows = np.random.default_rng(0).choice(len(sp), 40, replace=False)
    batch = s.make_batch(sp, rows)
    d = FeatureDefinition(max_len=10, n_positions=int(s.spec.n_positions))
    by_ts = sorted(log_events, key=lambda e: e.ts)
    ts_sorted = np.array([e.ts for e in by_ts])
    for j, row in enumerate(rows):
        t = int(sp.ts[row])
        store = MemoryStore()
        user = int(s.user_ids[sp.user[row] - 1])
        store.apply([e for e in by_ts[:np.searchsorted(ts_sorted, t)] if e.user_id == user], d)
        served = d.user_features(store.user(user), now=t)
        m = batch["hist_mask"][j].numpy()
        train_items = s.item_ids[batch["hist_item"][j].numpy()[m] - 1].tolist()
        assert served["hist_item"] == train_items
        assert served["hist_ts"] == batch["hist_ts"][j].numpy()[m].tolist()
        assert served["hist_position"] == batch["hist_position"][j].numpy()[m].tolist()


def test_cli_stream_exports_consumes_and_resumes(tmp_path, capsys):
    from edgerec.cli import main

    ev, db = tmp_path / "ev.jsonl", tmp_path / "f.db"
    assert main(["stream", "--events", str(ev), "--export-from", "o2o-sim:tiny", "--store", f"sqlite:{db}",
                 "--max-messages", "1000"]) == 0
    assert "1,000 applied" in capsys.readouterr().out
    assert main(["stream", "--events", str(ev), "--store", f"sqlite:{db}"]) == 0  # resumes at offset 1000
    out = capsys.readouterr().out
    assert "0 duplicates skipped" in out and "read 1,000" not in out
    assert main(["stream", "--events", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such event file" in capsys.readouterr().err
    assert main(["stream", "--events", str(ev), "--store", "postgres://x"]) == 2  # a store we do not have
    assert "unknown feature store 'postgres://x'" in capsys.readouterr().err


def test_follow_mode_applies_lines_appended_while_it_runs(tmp_path):
    import threading
    import time

    path = tmp_path / "feedback.jsonl"
    store = MemoryStore()
    src = FileEventSource(path, follow=True, poll_interval=0.02, idle_timeout=1.0)
    seen: list[float] = []

    def writer():
        for k in range(5):
            with open(path, "a") as f:  # a half line first, the rest later: never decoded half
                line = json.dumps(Event(f"f{k}", 1, k, 1_770_000_000 + k, "click").to_dict()) + "\n"
                f.write(line[:10])
                f.flush()
                time.sleep(0.03)
                f.write(line[10:])
            seen.append(time.monotonic())
            time.sleep(0.05)

    t = threading.Thread(target=writer)
    t.start()
    stats = run_stream(src, store, DEF, batch_size=100)
    t.join()
    assert stats.applied == 5 and stats.rejected == 0 and store.user(1).clicks == 5


def _dead_letters(path):
    return [json.loads(x) for x in path.with_suffix(".rejected.jsonl").read_text().splitlines()]


def test_poison_events_are_dead_lettered_and_the_events_behind_them_applied(tmp_path):
    """Issue 20, item 1: each poison line used to roll its batch back and crash every restart on the
    same line (or was applied although /feedback refuses it). Now: a dead letter naming the field,
    the valid events behind it applied, a restart and a full replay write no dead letter twice."""
    from tests.poison import GOOD, POISON

    lines, valid = [], []
    for k, (_, raw, _) in enumerate(POISON):
        ev = {**GOOD, "event_id": f"v{k}", "user_id": k}
        lines += [json.dumps(ev).encode(), raw]
        valid.append(ev)
    path = tmp_path / "ev.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    store = SQLiteStore(tmp_path / "s.db")
    stats = run_stream(FileEventSource(path), store, DEF, batch_size=3)  # poison lands inside batches
    assert (stats.read, stats.applied, stats.rejected) == (len(lines), len(valid), len(POISON))
    assert stats.future == 1
    assert all(store.user(ev["user_id"]).clicks == 1 for ev in valid)
    dead = _dead_letters(path)
    assert [d["offset"] for d in dead] == list(range(1, len(lines), 2))
    for d, (name, _, names) in zip(dead, POISON):
        assert names in d["error"], (name, d["error"])
        assert len(d["error"]) < 700, (name, d["error"])  # values cut, never printed in full
    assert store.offset(FileEventSource(path).name) == len(lines) - 1
    again = run_stream(FileEventSource(path), store, DEF)  # a restart: nothing left, nothing crashes
    assert (again.read, again.applied, again.rejected) == (0, 0, 0)
    store.db.execute("DELETE FROM offsets")  # a full replay from offset 0
    replay = run_stream(FileEventSource(path), store, DEF, batch_size=3)
    assert (replay.applied, replay.rejected, replay.duplicates) == (0, len(POISON), len(valid))
    assert _dead_letters(path) == dead  # each dead letter once


def test_a_retried_batch_writes_its_dead_letters_once(tmp_path):
    """The store fails after the batch's dead letters were written: the retry re-reads the batch and
    the dead-letter file does not grow (it used to double on each retry)."""
    from edgerec.errors import StoreUnavailable

    good = Event("a", 1, 2, 1_770_000_000, "click", 3).to_dict()
    path = tmp_path / "ev.jsonl"
    path.write_text("\n".join([json.dumps(good), "{not json", json.dumps({**good, "event_id": "b"})]) + "\n")
    store = SQLiteStore(tmp_path / "s.db")
    real, calls = store.apply, {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise StoreUnavailable("down")
        return real(*a, **kw)

    store.apply = flaky
    stats = run_stream(FileEventSource(path), store, DEF, retries=2, retry_wait=0)
    assert stats.retries == 2 and store.user(1).clicks == 2
    assert [d["offset"] for d in _dead_letters(path)] == [1]
    # the counts are those of the attempt that committed, not summed over the rolled-back ones
    assert (stats.read, stats.applied, stats.rejected) == (3, 2, 1)


def test_a_far_future_event_is_refused_and_cannot_block_later_events(tmp_path):
    """Issue 20, item 2: one event at ts 4e9 (2096) moved the watermark ahead, and every normal event
    after it was refused as older than the dedup window. Now the stream dead-letters an event later
    than the clock + the allowed skew; without the bound (future_skew_s=None) the old failure shows."""
    import time

    now = int(time.time())
    evs = [Event("a", 1, 2, now - 60, "click"), Event("future", 1, 2, 4_000_000_000, "click"),
           Event("b", 1, 3, now, "click"), Event("skewed", 1, 4, now + 3600, "click")]  # 1 h ahead: allowed
    path = write_event_file(evs, tmp_path / "ev.jsonl")
    store = SQLiteStore(tmp_path / "s.db")
    stats = run_stream(FileEventSource(path), store, DEF)
    assert (stats.applied, stats.rejected, stats.future, stats.late) == (3, 1, 1, 0)
    assert store.watermark(FileEventSource(path).name) == now + 3600
    (dead,) = _dead_letters(path)
    assert dead["offset"] == 1 and "later than this source's clock" in dead["error"]
    assert "--future-skew-hours" in dead["error"]
    unbounded = SQLiteStore(tmp_path / "u.db")
    old = run_stream(FileEventSource(path), unbounded, DEF, batch_size=1, future_skew_s=None)
    assert old.late == 2  # what happened before: the events after it look older than the dedup window


def test_a_historical_replay_is_not_refused_as_future(tmp_path):
    """The future bound is relative to this machine's clock, so a log from the past replays whole."""
    evs = [Event(f"e{k}", 1, k, 880_000_000 + 60 * k, "click") for k in range(5)]  # 1997, like ml-100k
    path = write_event_file(evs, tmp_path / "old.jsonl")
    stats = run_stream(FileEventSource(path), MemoryStore(dedup_window_s=None), DEF)
    assert (stats.applied, stats.rejected) == (5, 0)


def test_an_unfinished_last_line_is_not_dead_lettered_or_committed(tmp_path):
    """Issue 20, item 7: a last line without a newline (a writer still writing it) was dead-lettered
    and its offset committed, so the event was lost once the writer finished the line."""
    line = json.dumps(Event("late-writer", 1, 2, 1_770_000_000, "click").to_dict()) + "\n"
    path = tmp_path / "ev.jsonl"
    path.write_text(json.dumps(Event("a", 1, 2, 1_770_000_000, "click").to_dict()) + "\n" + line[:20])
    store = SQLiteStore(tmp_path / "s.db")
    stats = run_stream(FileEventSource(path), store, DEF)
    assert (stats.applied, stats.rejected, stats.incomplete) == (1, 0, 1)
    assert store.offset(FileEventSource(path).name) == 0 and not path.with_suffix(".rejected.jsonl").exists()
    follow = run_stream(FileEventSource(path, follow=True, poll_interval=0.01, idle_timeout=0.1), store, DEF)
    assert (follow.read, follow.incomplete) == (0, 1)  # --follow at its idle timeout: the same
    with open(path, "a") as f:
        f.write(line[20:])  # the writer finishes the line
    stats = run_stream(FileEventSource(path), store, DEF)
    assert (stats.applied, stats.rejected, stats.incomplete) == (1, 0, None) and store.user(1).clicks == 2


def test_a_complete_last_line_without_newline_is_applied_once(tmp_path):
    """A file whose last line lacks only its newline is read whole but not committed: the newline
    arriving later (and more lines after it) re-reads it once (a duplicate, not applied twice) and
    skips nothing."""
    e = [json.dumps(Event(f"e{k}", 1, k, 1_770_000_000 + k, "click").to_dict()) for k in range(3)]
    path = tmp_path / "ev.jsonl"
    path.write_text(e[0] + "\n" + e[1])
    store = SQLiteStore(tmp_path / "s.db")
    stats = run_stream(FileEventSource(path), store, DEF)
    assert (stats.applied, stats.incomplete) == (2, None)
    with open(path, "a") as f:
        f.write("\n" + e[2] + "\n")
    stats = run_stream(FileEventSource(path), store, DEF)
    assert (stats.read, stats.applied, stats.duplicates) == (2, 1, 1) and store.user(1).clicks == 3


def test_an_append_without_a_newline_first_is_not_lost(tmp_path):
    """A last line without its newline is applied but never committed: when the next writer appends
    without the newline (cat >>, a torn write), the merged line is read again and dead-lettered
    (visible), not silently skipped as an already committed line."""
    e = [json.dumps(Event(f"e{k}", 1, k, 1_770_000_000 + k, "click").to_dict()) for k in range(3)]
    path = tmp_path / "ev.jsonl"
    path.write_text(e[0] + "\n" + e[1])
    store = SQLiteStore(tmp_path / "s.db")
    assert run_stream(FileEventSource(path), store, DEF).applied == 2
    with open(path, "a") as f:
        f.write(e[2] + "\n")  # no newline first: line 2 is now e[1] + e[2]
    stats = run_stream(FileEventSource(path), store, DEF)
    assert (stats.read, stats.rejected) == (1, 1)
    dead = [json.loads(x) for x in path.with_suffix(".rejected.jsonl").read_text().splitlines()]
    assert dead[-1]["offset"] == 1 and e[2] in dead[-1]["message"]


def test_dead_letters_keep_bad_bytes_and_differ_by_content(tmp_path):
    """Dead letters are keyed by the line's sha256: two different lines of bad bytes at one offset
    (a rewritten file) are both written, and bytes that are not UTF-8 are kept as escapes."""
    path = tmp_path / "ev.jsonl"
    dead = path.with_suffix(".rejected.jsonl")
    for bad in (b"\xfe\xff one\n", b"\xfe\xfe two\n"):
        path.write_bytes(bad)
        run_stream(FileEventSource(path), MemoryStore(), DEF)  # a new store each time: offset 0 again
    rows = [json.loads(x) for x in dead.read_text().splitlines()]
    assert [r["message"] for r in rows] == ["\\xfe\\xff one", "\\xfe\\xfe two"]
    assert len({r["sha256"] for r in rows}) == 2


def test_cli_stream_future_skew_flag_and_unfinished_line_warning(tmp_path, capsys):
    from edgerec.cli import main

    ev = tmp_path / "ev.jsonl"
    ev.write_text(json.dumps(Event("f", 1, 2, 4_000_000_000, "click").to_dict()) + "\n" + '{"event_id": "x", "us')
    assert main(["stream", "--events", str(ev), "--store", "memory", "--future-skew-hours", "-1"]) == 2
    assert "--future-skew-hours must be a finite number >= 0" in capsys.readouterr().err
    for bad in ("inf", "nan"):
        assert main(["stream", "--events", str(ev), "--store", "memory", "--future-skew-hours", bad]) == 2
        assert "must be a finite number" in capsys.readouterr().err
    # a skew as long as the dedup window would let one event block the rest (review finding)
    assert main(["stream", "--events", str(ev), "--store", "memory", "--dedup-days", "0.5"]) == 2
    assert "must be shorter than the dedup window (12 h)" in capsys.readouterr().err
    assert main(["stream", "--events", str(ev), "--store", "memory"]) == 0
    out, err = capsys.readouterr()
    assert "1 rejected (1 later than the clock + the allowed skew)" in out
    assert "line 2 has no newline yet" in err and "left unread and uncommitted" in err
    assert main(["stream", "--events", str(ev), "--store", "memory", "--future-skew-hours", "0"]) == 0
    assert "1 applied" in capsys.readouterr().out  # 0: no bound (a log ahead of the clock)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(st.binary(max_size=60), st.builds(to_line, EVENT_DICTS),
                 st.sampled_from([raw for _, raw, _ in POISON])))
def test_decode_raises_only_data_format_errors_and_its_events_fit_the_stores(raw):
    """Whatever a message holds, decode gives an Event or a DataFormatError, and an Event it gives
    folds into the SQLite store (int64 columns, UTF-8 text) without error."""
    try:
        e = decode(raw, "fuzz")
    except DataFormatError:
        return
    store = SQLiteStore(":memory:")
    assert store.apply([e], DEF) == 1
    assert DEF.user_features(store.user(e.user_id), now=e.ts)["clicks"] == (e.kind == "click")


def test_a_message_without_a_value_is_a_dead_letter_not_a_crash():
    """A Kafka tombstone (value None) used to raise TypeError inside json.loads."""
    with pytest.raises(DataFormatError, match="an empty message"):
        decode(None, "kafka:t:0 offset 7")


_DAY = 86400


@st.composite
def _stream_cases(draw):
    """A log with out-of-order, old (past the dedup window) and re-sent events and a bad line, cut
    into batches of some size, killed once at some batch (after its dead letters were written, before
    its commit), and resumed with another batch size."""
    n = draw(st.integers(4, 24))
    days = draw(st.lists(st.integers(0, 20), min_size=n, max_size=n))
    events = [Event(f"e{k}", k % 3, k % 4, 1_760_000_000 + d * _DAY + k, "click" if k % 2 else "exposure", 1)
              for k, d in enumerate(days)]
    order = draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=2 * n))  # repeats are re-sent events
    lines = [json.dumps(events[k].to_dict()) for k in order]
    lines.insert(draw(st.integers(0, len(lines))), "{not json")
    return lines, draw(st.integers(1, len(lines) + 1)), draw(st.integers(1, 8)), draw(st.integers(1, len(lines) + 1))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(_stream_cases())
def test_the_stream_result_does_not_depend_on_batch_size_or_restarts(case):
    """Issue 20, item 7: the late rule used the watermark at the start of each batch, so an old event
    in the same batch as a new one was applied, and dead-lettered when the batches fell otherwise.
    Now every cut of the log, with a kill anywhere, ends in the state of one uncut pass."""
    import tempfile
    from pathlib import Path

    lines, batch, kill_at, batch_after = case

    def run(tmp: Path, sizes: tuple[int, int], kill: int | None):
        path = tmp / "ev.jsonl"
        path.write_text("\n".join(lines) + "\n")
        store = SQLiteStore(tmp / "s.db", dedup_window_s=7 * _DAY)
        real, calls = store.apply, {"n": 0}

        def dying(events, definition, source=None, offset=None, on_late=None, before_commit=None):
            def sync_then_die():
                before_commit()
                calls["n"] += 1
                if calls["n"] == kill:
                    raise Crash()
            return real(events, definition, source, offset, on_late=on_late, before_commit=sync_then_die)

        store.apply = dying
        try:
            run_stream(FileEventSource(path), store, DEF, batch_size=sizes[0])
        except Crash:
            run_stream(FileEventSource(path), store, DEF, batch_size=sizes[1])  # the restart
        users = _snapshot(store, range(3), range(4))
        applied = sorted(r[0] for r in store.db.execute("SELECT event_id FROM applied"))
        dead = sorted((d["offset"], d["error"].replace(str(path.resolve()), "")) for d in _dead_letters(path))
        return users, applied, dead

    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        reference = run(Path(a), (len(lines) + 1, len(lines) + 1), None)
        assert run(Path(b), (batch, batch_after), kill_at) == reference


def test_a_last_line_cut_anywhere_is_left_unread_until_its_newline(tmp_path):
    """Review of issue 20: a last line cut inside `null` (every Event.to_dict() writes two) or a \\u
    escape was dead-lettered as bad, and once finished it was applied too: a dead letter for an
    applied event. Now any last line that is not a whole JSON object is left unread."""
    line = json.dumps({**Event("a", 1, 2, 1_770_000_000, "click").to_dict(), "event_id": "caf\u00e9"})
    store = SQLiteStore(tmp_path / "s.db")
    path = tmp_path / "ev.jsonl"
    for cut in (line.index("null") + 2, line.index("\\u") + 3, len(line) - 1):
        path.write_text(line[:cut])
        stats = run_stream(FileEventSource(path), store, DEF)
        assert (stats.applied, stats.rejected, stats.incomplete) == (0, 0, 0), cut
    path.write_text(line + "\n")
    stats = run_stream(FileEventSource(path), store, DEF)
    assert (stats.applied, stats.rejected) == (1, 0) and not path.with_suffix(".rejected.jsonl").exists()


def test_dead_letters_count_toward_the_batch_and_a_torn_dead_letter_file_loses_none(tmp_path):
    """Review of issue 20: bad lines never closed a batch (100,000 of them were one batch held in
    memory, nothing committed until the end), and a torn last record of the dead-letter file
    swallowed the next one."""
    path = tmp_path / "ev.jsonl"
    path.write_text("\n".join(["{not json"] * 10 + [json.dumps(Event("a", 1, 2, 1_770_000_000, "click").to_dict())])
                    + "\n")
    path.with_suffix(".rejected.jsonl").write_text('{"offset": 99, "error": "torn')  # a crash mid-write
    stats = run_stream(FileEventSource(path), SQLiteStore(tmp_path / "s.db"), DEF, batch_size=3)
    assert stats.batches == 4 and (stats.applied, stats.rejected) == (1, 10)
    assert [d["offset"] for d in _dead_letters_skipping_torn(path)] == list(range(10))


def _dead_letters_skipping_torn(path):
    out = []
    for x in path.with_suffix(".rejected.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(x))
        except ValueError:
            continue
    return out


def test_a_locked_sqlite_store_is_a_retry_not_a_traceback(tmp_path):
    """Review of issue 20: another writer holding the SQLite file made `edgerec stream` end in an
    sqlite3.OperationalError traceback, and --retries never applied to SQLite."""
    import sqlite3

    from edgerec.errors import StoreUnavailable

    store = SQLiteStore(tmp_path / "s.db")
    store.db.execute("PRAGMA busy_timeout = 50")
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailable, match="database is locked"):
        store.apply([Event("a", 1, 2, 1_770_000_000, "click")], DEF)
    other.execute("ROLLBACK")
    assert store.apply([Event("a", 1, 2, 1_770_000_000, "click")], DEF) == 1


def test_a_file_name_that_is_not_utf8_streams(tmp_path):
    import os

    raw = os.fsencode(tmp_path) + b"/ev\xff.jsonl"
    with open(raw, "w") as f:
        f.write(json.dumps(Event("a", 1, 2, 1_770_000_000, "click").to_dict()) + "\n")
    src = FileEventSource(os.fsdecode(raw))
    store = SQLiteStore(tmp_path / "s.db")
    assert run_stream(src, store, DEF).applied == 1 and store.offset(src.name) == 0


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_store_keeps_the_zone_of_its_first_fold_and_refuses_another(tmp_path, log_events, kind):
    """Per-user hour-of-week counts of two zones in one store would be silently wrong: the store
    records its zone at the first fold, and a fold in another zone changes nothing."""
    from edgerec.errors import ConfigError

    store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "f.db")
    assert store.zone() is None
    store.apply([], FeatureDefinition(tz="Asia/Shanghai"))  # nothing applied: no zone yet
    assert store.zone() is None
    shanghai = FeatureDefinition(max_len=10, n_positions=6, tz="Asia/Shanghai")
    store.apply(log_events[:100], shanghai, "a", 99)
    before = _snapshot(store, {e.user_id for e in log_events}, {e.item_id for e in log_events})
    with pytest.raises(ConfigError, match="folded in time zone Asia/Shanghai, and this fold uses UTC"):
        store.apply(log_events[100:200], DEF, "a", 199)
    assert store.offset("a") == 99
    assert _snapshot(store, {e.user_id for e in log_events}, {e.item_id for e in log_events}) == before
    if kind == "sqlite":
        assert SQLiteStore(tmp_path / "f.db").zone() == "Asia/Shanghai"  # persisted with the states


def test_cli_stream_takes_the_zone_of_its_store_and_refuses_another(tmp_path, capsys):
    """`edgerec serve --feedback-to F` then `edgerec stream --events F --store S` (no --tz, no dataset):
    the stream folds in the zone the store was first folded in, not UTC."""
    from edgerec.cli import main
    from edgerec.features.store import SQLiteStore

    ev, db = tmp_path / "ev.jsonl", tmp_path / "f.db"
    assert main(["stream", "--events", str(ev), "--export-from", "o2o-sim:tiny", "--store", f"sqlite:{db}",
                 "--max-messages", "300", "--tz", "UTC+8"]) == 0
    more = tmp_path / "more.jsonl"
    more.write_text("".join(ev.read_text().splitlines(keepends=True)[300:400]))
    capsys.readouterr()
    assert main(["stream", "--events", str(more), "--store", f"sqlite:{db}", "--tz", "UTC"]) == 2
    assert "folded in time zone UTC+8, and this fold uses UTC" in capsys.readouterr().err
    assert main(["stream", "--events", str(more), "--store", f"sqlite:{db}"]) == 0
    assert "100 applied" in capsys.readouterr().out and SQLiteStore(db).zone() == "UTC+8"
    fresh = tmp_path / "fresh.jsonl"  # refused before --export-from writes the file
    assert main(["stream", "--events", str(fresh), "--export-from", "o2o-sim:tiny", "--store", f"sqlite:{db}",
                 "--tz", "UTC"]) == 2 and not fresh.exists()
    assert main(["stream", "--events", str(more), "--store", f"sqlite:{db}", "--tz", "UTC+08:00"]) == 0  # one zone
