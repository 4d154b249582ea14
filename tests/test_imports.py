"""Your own data: the dataset file, import checks, local time, id maps, buckets, and the CLI round trip."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from edgerec.data import registry
from edgerec.data.imports import DatasetFile, IdMap, TableFile, import_dataset, parse_time, read_dataset_file
from edgerec.errors import DataFormatError, EdgerecError
from edgerec.features.time import LocalClock, local_clock, time_slots

ROOT = Path(__file__).resolve().parents[1]
TZ = "Asia/Kolkata"  # UTC+05:30: a non-UTC zone whose half hour catches an offset applied in whole hours
NOON_LOCAL_MS = 1767594600000  # 2026-01-05 12:00 in Kolkata = 06:30 UTC, a Monday


def _log_rows() -> list[str]:
    """An impression log unlike our datasets: string ids, ms times, renamed and extra columns."""
    rows = ["who,what,when_ms,shown_at,got,visit,cat,depth,app"]
    t = NOON_LOCAL_MS
    for day in range(6):
        for u, user in enumerate(("alice", "bob", "carol")):
            for p, item in enumerate(("i-a", "i-b", "i-c")):
                ms = t + day * 86_400_000 + u * 60_000 + p
                rows.append(f"{user},{item},{ms},{p + 1},{int((u + p + day) % 3 == 0)},v{day}{u},{'cafe' if p < 2 else 'bar'},"
                            f"{0.2 + 0.3 * u},{'7.2' if p else '7.1'}")
    good = len(rows) - 1
    rows += [
        f",i-a,{t},1,1,v9,cafe,0.2,7.1",  # missing user
        f"alice,i-a,yesterday,1,1,v9,cafe,0.2,7.1",  # unparseable time
        f"alice,i-a,-5,1,1,v9,cafe,0.2,7.1",  # before 1970
        f"alice,i-a,{t},1,2,v9,cafe,0.2,7.1",  # label 2
        f"alice,i-b,{t + 5},0,1,v9,cafe,0.2,7.1",  # position 0
        f"alice,i-b,{t + 6},top,1,v9,cafe,0.2,7.1",  # position text
        rows[1],  # an exact duplicate of the first row
        f"dave,i-a,{t},1,0,v8,cafe,0.9,7.1",  # a user with one event (min_user_events 2)
    ]
    return rows, good


def _spec(tmp_path: Path, name: str = "mylog", **kw) -> DatasetFile:
    rows, _ = _log_rows()
    ev = tmp_path / "events.csv"
    ev.write_text("\n".join(rows) + "\n")
    m = {"user": "who", "item": "what", "time": "when_ms", "label": "got", "position": "shown_at", "request": "visit",
         "item.category": "cat", "user.depth": "depth", "side.app": "app"}
    return DatasetFile(name=name, events=TableFile(str(ev), m), tz=TZ, time_unit="ms", buckets={"depth": 2},
                       min_user_events=2, **kw)


def test_local_clock_daylight_saving_and_fixed_offsets():
    berlin = LocalClock("Europe/Berlin")
    # 2024-03-31 01:00 UTC: CET (+1) -> CEST (+2), to the second
    assert berlin.offset(np.array([1711846799, 1711846800])).tolist() == [3600, 7200]
    assert time_slots(berlin.local(np.array([1719835200])))["hour"][0] == 14  # 12:00 UTC in July = 14:00
    assert LocalClock("UTC+8").local(np.array([0]))[0] == 8 * 3600
    assert local_clock("UTC").is_utc and local_clock(None).is_utc
    import torch

    assert berlin.local(torch.tensor([1719835200])).tolist() == berlin.local(np.array([1719835200])).tolist()
    with pytest.raises(ValueError, match="IANA name"):
        LocalClock("Mars/Olympus")


def test_import_keeps_counts_and_writes_every_rejected_row(tmp_path):
    spec = _spec(tmp_path)
    s = import_dataset(spec, tmp_path / "data", log=lambda *_: None)
    _, good = _log_rows()
    assert s["imported_rows"] == good
    assert s["read_rows"] == good + 8 and s["rejected_rows"] == 8  # nothing lost: every row is one or the other
    assert {k: v["rows"] for k, v in s["rejected"].items()} == {
        "missing value": 1, "unparseable time": 1, "time out of range": 1, "label not 0/1": 1, "bad position": 2,
        "duplicate row": 1, "too few events": 1}
    assert (f"row {good + 2} (line {good + 3}), column 'when_ms', value 'yesterday'"
            in s["rejected"]["unparseable time"]["first"])  # the header is line 1
    rejected = pacsv.read_csv(tmp_path / "data" / "mylog" / "rejected.csv").to_pylist()
    assert [r["row"] for r in rejected] == list(range(good + 1, good + 9))
    again = read_dataset_file(tmp_path / "data" / "mylog" / "dataset.yaml")  # the dataset file round-trips
    assert again.to_dict() == spec.to_dict()


def test_imported_ids_times_and_attributes(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEREC_DATA_DIR", str(tmp_path / "data"))
    import_dataset(_spec(tmp_path), tmp_path / "data", log=lambda *_: None)
    ds = registry.load("mylog")
    assert ds.meta["tz"] == TZ and ds.users.column_names == ["user_id", "depth"]
    users = IdMap.from_table(ds.extras["id_map_user"])
    assert users.ids.to_pylist() == ["alice", "bob", "carol"]  # sorted strings -> 1..N; dave (too few events) is gone
    assert ds.users.column("user_id").to_pylist() == [1, 2, 3] and ds.meta["import"]["users"] == 3
    new = users.encode("zed")
    assert new >= 2 ** 62 and new == IdMap.from_table(ds.extras["id_map_user"]).encode("zed")  # stable across processes
    e = ds.events
    first = e.slice(0, 1).to_pylist()[0]
    assert first["ts"] == NOON_LOCAL_MS // 1000 and first["user_id"] == 1 and first["app"] == "7.1"  # read as text: never coerced to a number
    from edgerec.data.samples import build_impressions

    s = build_impressions(ds, max_len=5, user_features=["depth"], item_features=["category"])
    assert s.spec.tz == TZ
    b = s.make_batch(s.splits["train"], np.arange(3))
    slots = time_slots(b["ts"])
    assert slots["hour"].tolist() == [12, 12, 12] and slots["weekday"].tolist() == [0, 0, 0]  # local Monday noon
    assert set(s.user_feats["depth"][1:4].tolist()) <= {1, 2} and s.spec.user_features["depth"] == 3  # 2 buckets + 0


def test_numeric_attribute_buckets_fit_on_training_users_only(tmp_path):
    from edgerec.data.samples import _encode_side
    import pyarrow as pa

    table = pa.table({"user_id": [1, 2, 3, 4], "depth": [0.1, 0.2, 0.3, 1000.0]})
    vocab = np.array([1, 2, 3, 4])
    only_train = _encode_side(table, "user_id", vocab, ["depth"], "user", {"depth": 2}, np.array([1, 2, 3]))[0]
    everyone = _encode_side(table, "user_id", vocab, ["depth"], "user", {"depth": 2}, None)[0]
    assert only_train["depth"][1:5].tolist() == [1, 2, 2, 2]  # the boundary (0.2) ignores user 4 (test only)
    assert everyone["depth"][1:5].tolist() == [1, 1, 2, 2]  # with user 4 the median moves: what the fit must not see
    from edgerec.errors import ConfigError

    with pytest.raises(ConfigError, match="bucket it at import"):
        _encode_side(table, "user_id", vocab, ["depth"], "user", {}, None)


def test_bad_dataset_files_name_the_problem(tmp_path):
    spec = _spec(tmp_path)
    for change, match in ((dict(tz="Mars/Base"), "IANA"), (dict(time_unit="ns"), "time_unit"),
                          (dict(name="a:b"), "dataset name"), (dict(buckets={"depth": 1}), "from 2 to 1000")):
        bad = DatasetFile(**{**spec.__dict__, **change})
        with pytest.raises(DataFormatError, match=match):
            bad.check()
    with pytest.raises(DataFormatError, match="not mapped"):
        DatasetFile("x", TableFile(spec.events.path, {"user": "who"})).check()
    with pytest.raises(DataFormatError, match=r"no column\(s\) \['nope'\]"):
        import_dataset(DatasetFile("x", TableFile(spec.events.path, {**spec.events.map, "user": "nope"})), tmp_path)
    no_bucket = DatasetFile(**{**spec.__dict__, "buckets": {}})
    with pytest.raises(DataFormatError, match=r"attribute 'depth' is numeric .*--bucket depth=8"):
        import_dataset(no_bucket, tmp_path / "d2", log=lambda *_: None)
    varying = DatasetFile(**{**spec.__dict__, "events": TableFile(spec.events.path, {**spec.events.map,
                                                                                      "item.visit": "visit"})})
    with pytest.raises(DataFormatError, match="item 'i-a' has two values"):
        import_dataset(varying, tmp_path / "d3", log=lambda *_: None)


def test_iso_times_are_local_unless_zoned():
    import pyarrow as pa

    secs, bad, out = parse_time(pa.array(["2026-01-05T12:00:00", "2026-01-05 06:30:00Z", "2026-13-01T00:00:00",
                                          "noon", None]), "iso", TZ)
    assert secs.to_pylist()[:2] == [NOON_LOCAL_MS // 1000] * 2
    assert bad.to_pylist() == [False, False, True, True, False]
    # impossible dates among many valid ones: found by halving, every other value still parsed
    vals = [f"2026-01-05T12:{k % 60:02d}:00" for k in range(1000)]
    for k in (0, 517, 999):
        vals[k] = "2026-02-30T00:00:00"
    secs, bad, _ = parse_time(pa.array(vals), "iso", TZ)
    assert np.flatnonzero(bad.to_numpy(zero_copy_only=False)).tolist() == [0, 517, 999]
    assert secs.to_pylist()[1:4] == [NOON_LOCAL_MS // 1000 + 60 * k for k in (1, 2, 3)] and secs[517].as_py() is None


def test_unknown_dataset_error_points_to_import():
    with pytest.raises(EdgerecError, match="edgerec data import NAME"):
        registry.parse_id("not-a-dataset")


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "edgerec.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


def test_cli_round_trip_import_train_serve_feedback_stream(tmp_path):
    """import -> describe -> train a _test experiment -> serve: recommend with a string id, feedback, stream."""
    from fastapi.testclient import TestClient

    from edgerec.data.example import IMPORT_ARGS
    from edgerec.serve.app import create_app
    from edgerec.serve.server import ServiceRecipe, build_service

    env = {**os.environ, "EDGEREC_DATA_DIR": str(tmp_path / "data"), "EDGEREC_THREADS": "1"}
    p = _cli("data", "example", str(tmp_path / "ex"), "--size", "tiny", env=env)
    assert p.returncode == 0, p.stderr
    p = _cli("data", "import", "myfeed", "--events", str(tmp_path / "ex" / "events.csv"), "--items",
             str(tmp_path / "ex" / "items.csv"), *IMPORT_ARGS, env=env)
    assert p.returncode == 0 and "rejected 0 rows" in p.stdout, p.stdout + p.stderr
    p = _cli("data", "describe", "myfeed", "--json", env=env)
    d = json.loads(p.stdout)
    assert d["tz"] == "Asia/Shanghai" and d["items"] >= 100 and "scroll_depth" in d["user_features"]
    p = _cli("train", "--config", "configs/ctr.yaml", "--expid", "COUPA_test", "--set", "dataset=myfeed",
             "--set", "data.item_features=[category]", "--set", "data.user_features=[scroll_depth]",
             "--set", f"output_dir={tmp_path / 'runs'}", "--set", f"ledger={tmp_path / 'ledger.jsonl'}", env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "ledger.jsonl").read_text().splitlines()[-1])["dataset"] == "myfeed"
    run = next((tmp_path / "runs" / "COUPA_test").iterdir())
    assert (run / "id_map_user.parquet").exists()
    p = _cli("stream", "--events", str(tmp_path / "log.jsonl"), "--export-from", "myfeed", "--store",
             f"sqlite:{tmp_path / 'f.db'}", "--max-len", "10", env=env)  # the online store from the log
    assert p.returncode == 0 and " 0 rejected" in p.stdout + p.stderr, p.stdout + p.stderr
    events = tmp_path / "feedback.jsonl"
    old = os.environ.get("EDGEREC_DATA_DIR")
    os.environ["EDGEREC_DATA_DIR"] = env["EDGEREC_DATA_DIR"]
    try:
        svc = build_service(ServiceRecipe(store=f"sqlite:{tmp_path / 'f.db'}", run=str(run), feedback_to=str(events)))
        client = TestClient(create_app(svc))
        r = client.post("/recommend", json={"user_id": "u00067", "k": 5, "ts": 1768800000})  # after the log
        assert r.status_code == 200, r.text
        items = [x["item_id"] for x in r.json()["items"]]
        assert len(items) == 5 and all(isinstance(i, str) and i.startswith("poi-") for i in items)
        served = [x["score"] for x in r.json()["items"]]
        rows = tmp_path / "rows.csv"  # batch scoring gives the service's scores for the same moment
        rows.write_text("uid,poi,event_ms,app\n" + "".join(f"u00067,{i},1768800000000,9.1\n" for i in items)
                        + "someone-new,poi-0001,1768800000000,9.1\n")  # rows in the log's own format: no flags
        p = _cli("predict", "--run", str(run), "--input", str(rows), "--out", str(tmp_path / "s.parquet"), env=env)
        assert p.returncode == 0, p.stderr
        import pyarrow.parquet as pq

        scored = pq.read_table(tmp_path / "s.parquet").to_pylist()
        assert np.allclose([x["score"] for x in scored[:5]], served, atol=1e-5)
        assert scored[5]["known_user"] is False and 0 < scored[5]["score"] < 1 and scored[0]["app"] == "9.1"  # as written
        plain = tmp_path / "plain.csv"  # other columns and seconds: named with --map / --time-unit
        plain.write_text("who,what,t\n" + "".join(f"u00067,{i},1768800000\n" for i in items))
        p = _cli("predict", "--run", str(run), "--input", str(plain), "--out", str(tmp_path / "p.parquet"),
                 "--map", "user=who", "--map", "item=what", "--map", "time=t", "--time-unit", "s", env=env)
        assert p.returncode == 0, p.stderr
        assert np.allclose(pq.read_table(tmp_path / "p.parquet").column("score").to_numpy(), served, atol=1e-5)
        p = _cli("predict", "--run", str(run), "--input", str(plain), "--out", str(tmp_path / "q.parquet"), env=env)
        assert p.returncode == 2 and "--map user=COL" in p.stderr and "uid" in p.stderr and "Traceback" not in p.stderr, p.stderr
        p = _cli("predict", "--run", str(run), "--input", str(plain), "--out", str(tmp_path / "r.parquet"),
                 "--map", "user=who", "--map", "item=what", "--map", "time=t", "--time-unit", "ms", env=env)
        assert p.returncode == 2 and "look like unix seconds" in p.stderr and not (tmp_path / "r.parquet").exists()
        ev = {"event_id": "rt-1", "user_id": "a-new-user", "item_id": items[0], "ts": 1768200000, "kind": "click",
              "position": 1}
        assert client.post("/feedback", json={"events": [ev]}).json() == {"accepted": 1}
    finally:
        if old is None:
            os.environ.pop("EDGEREC_DATA_DIR", None)
        else:
            os.environ["EDGEREC_DATA_DIR"] = old
    p = _cli("stream", "--events", str(events), "--store", f"sqlite:{tmp_path / 'f.db'}", env=env)
    assert p.returncode == 0 and "1 applied" in p.stdout + p.stderr, p.stdout + p.stderr
    os.environ["EDGEREC_DATA_DIR"] = env["EDGEREC_DATA_DIR"]
    try:
        svc2 = build_service(ServiceRecipe(store=f"sqlite:{tmp_path / 'f.db'}", run=str(run)))
        r = TestClient(create_app(svc2)).post("/recommend", json={"user_id": "a-new-user", "ts": 1768200100})
        assert r.status_code == 200 and r.json()["history_length"] == 1  # the new user's click is his history
        c2 = TestClient(create_app(svc2))
        assert c2.post("/recommend", json={"user_id": 3.5}).status_code == 422
        long = c2.post("/recommend", json={"user_id": "u" * 300})
        assert long.status_code == 422 and "256" in long.text and "valid integer" not in long.text
        blank = c2.post("/recommend", json={"user_id": "   "})
        assert blank.status_code == 422 and blank.json()["detail"][0]["loc"] == ["body", "user_id"]
        from edgerec.errors import ConfigError
        from edgerec.features.definition import Event, FeatureDefinition
        from edgerec.features.store import SQLiteStore

        assert SQLiteStore(tmp_path / "f.db").zone() == "Asia/Shanghai"  # the feedback stream took the store's zone
        SQLiteStore(tmp_path / "utc.db").apply([Event("e", 1, 1, 1768200000, "click")], FeatureDefinition())
        with pytest.raises(ConfigError, match="folded in time zone UTC, and this fold uses Asia/Shanghai"):
            build_service(ServiceRecipe(store=f"sqlite:{tmp_path / 'utc.db'}", run=str(run)))  # at start
    finally:
        if old is None:
            os.environ.pop("EDGEREC_DATA_DIR", None)
        else:
            os.environ["EDGEREC_DATA_DIR"] = old


def test_own_text_task_with_split_column_and_vocab_floor(tmp_path):
    from edgerec.compress.prune import select_vocab
    from edgerec.compress.tasks import load_task, register_task

    f = tmp_path / "intents.csv"
    rows = ["text,label,split"] + [f"order some {w} {i},order,{('train', 'valid', 'test')[i % 3]}"
                                   for i, w in enumerate(["noodles", "tea"] * 6)]
    rows += [f"cancel it now {i},cancel,{('train', 'valid', 'test')[i % 3]}" for i in range(12)]
    f.write_text("\n".join(rows) + "\n")
    register_task("intent", str(f))
    t = load_task("intent")
    assert t.labels == ["cancel", "order"] and t.sizes() == {"train": 8, "valid": 8, "test": 8}  # the user's split
    assert all(x.endswith(("0", "3", "6", "9")) for x in t.text["train"])
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label,split\nhello there,a,train\nbye now,b,dev\n")
    with pytest.raises(DataFormatError, match=r"row 2 \(line 3\), column 'split': 'dev'"):
        register_task("bad", str(bad))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "hello", "world", "pizza"]
    score = np.array([0, 0, 0, 0, 0, 1, 1, 0.0, 0.0, 5.0])
    freq = np.array([0, 0, 0, 0, 0, 1, 1, 0, 0, 1])
    assert "hello" not in select_vocab(vocab, score, freq, 9)
    assert select_vocab(vocab, score, freq, 9, floor=np.array([7, 8]))[5:] == ["a", "b", "hello", "world"]


def test_stream_refuses_a_table_and_fails_when_every_event_is_rejected(tmp_path):
    env = {**os.environ, "EDGEREC_DATA_DIR": str(tmp_path / "data")}
    csv = tmp_path / "events.csv"
    csv.write_text("user_id,item_id,ts\n1,2,3\n")
    p = _cli("stream", "--events", str(csv), "--store", "memory", env=env)
    assert p.returncode == 2 and "edgerec data import" in p.stderr and "Traceback" not in p.stderr  # a user error
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"user": 1}\n{"user": 2}\n')
    p = _cli("stream", "--events", str(junk), "--store", "memory", env=env)
    assert p.returncode == 0 and "warning:" in p.stderr and "every one of the 2 messages was rejected" in p.stderr


def test_event_kinds_fold_a_click_into_its_exposure(tmp_path):
    """Review finding: an exposure row and a click row of one impression were a negative AND a positive."""
    ev = tmp_path / "kinds.csv"
    ev.write_text("u,i,t,what,p,req\na,x,100,impression,1,r1\na,x,105,click,1,r1\na,y,100,impression,2,r1\n"
                  "b,y,200,click,1,r9\nb,x,300,Click,1,r9\n")
    spec = DatasetFile("kinds", TableFile(str(ev), {"user": "u", "item": "i", "time": "t", "kind": "what",
                                                     "position": "p", "request": "req"}))
    s = import_dataset(spec, tmp_path / "d", log=lambda *_: None)
    assert s["clicks_folded_into_exposures"] == 1 and s["rejected"]["unknown event kind"]["rows"] == 1  # 'Click'
    e = EventDatasetLoad(tmp_path / "d", "kinds").events
    assert sorted(zip(e.column("ts").to_pylist(), e.column("label").to_pylist())) == [(100, 0), (100, 1), (200, 1)]
    assert s["read_rows"] == s["imported_rows"] + s["rejected_rows"] + s["clicks_folded_into_exposures"]


def EventDatasetLoad(root, name):
    from edgerec.data.schema import EventDataset

    return EventDataset.load(root, name)


def test_jsonl_parquet_iso_inputs_and_an_incomplete_item_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from edgerec.serve.service import CandidateIndex

    rows = [{"u": "a", "i": "x", "t": "2026-01-05T12:00:00", "y": 1, "p": 1},
            {"u": "a", "i": "z", "t": "2026-01-05T12:30:00", "y": 0, "p": 2},
            {"u": "b", "i": "y", "t": "noon", "y": 1, "p": 1}]
    (tmp_path / "e.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "e.parquet")
    (tmp_path / "items.csv").write_text("i,title,cat\nx,Noodles,food\ny,Coffee,drink\n")  # z is missing
    m = {"user": "u", "item": "i", "time": "t", "label": "y", "position": "p"}
    for name, f in (("j", "e.jsonl"), ("q", "e.parquet")):
        spec = DatasetFile(name, TableFile(str(tmp_path / f), m), items=TableFile(str(tmp_path / "items.csv"),
                                                                                   {"category": "cat"}),
                           tz=TZ, time_unit="iso")
        s = import_dataset(spec, tmp_path / "d", log=lambda *_: None)
        where = s["rejected"]["unparseable time"]["first"]
        assert s["imported_rows"] == 2 and ("row 3 (line 3)" in where if f.endswith("jsonl") else "row 3," in where)
        ds = EventDatasetLoad(tmp_path / "d", name)
        assert ds.events.column("ts").to_pylist()[0] == NOON_LOCAL_MS // 1000
        assert ds.items.num_rows == 3  # every event item is in the catalogue, z with null attributes
        index = CandidateIndex.from_dataset(ds)  # was an IndexError with z missing from the items file
        assert index.tz == TZ and index.slot_clicks.sum() == 1
        assert index.slot_clicks[0, 12] == 1  # x clicked Monday 12:00 local: hour of week 12 (06:30 UTC)


def test_dataset_file_paths_and_names(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEREC_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "e.csv").write_text("u,i,t,y\na,x,100,1\na,y,200,0\n")
    yml = tmp_path / "f" / "mine.yaml"
    yml.write_text("name: mine\nevents: {path: e.csv, map: {user: u, item: i, time: t, label: y}}\n")
    assert registry.load(str(yml)).events.num_rows == 2  # a relative path is relative to the dataset file
    yml.write_text("name: ml-100k\nevents: {path: e.csv, map: {user: u, item: i, time: t, label: y}}\n")
    with pytest.raises(EdgerecError, match="bundled dataset"):
        registry.parse_id(str(yml))
    with pytest.raises(DataFormatError, match="buckets must be a mapping"):
        DatasetFile.from_dict({"name": "x", "events": {"path": "e.csv", "map": {}}, "buckets": ["price"]}, "f.yaml")
    spec = DatasetFile.from_dict({"name": "x", "events": {"path": "e.csv", "map": {"user": "u", "item": "i",
                                  "time": "t", "kind": "k"}}, "click_kinds": "click, order"}, "f.yaml")
    assert spec.click_kinds == ["click", "order"]
    with pytest.raises(DataFormatError, match="--click-kinds and --exposure-kinds share \\['view'\\]"):
        DatasetFile.from_dict({"name": "x", "events": {"path": "e.csv", "map": {"user": "u", "item": "i", "time": "t",
                               "kind": "k"}}, "click_kinds": ["click", "view"]}, "f.yaml")  # refused before any data
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataFormatError, match="empty"):
        import_dataset(DatasetFile("x", TableFile(str(tmp_path / "f" / "e.csv"), {"user": "u", "item": "i",
                       "time": "t", "label": "y"}), items=TableFile(str(empty))), tmp_path / "d", log=lambda *_: None)
    header = tmp_path / "header.csv"
    header.write_text("u,i,t,y\n")
    with pytest.raises(DataFormatError, match="has a header but no rows"):
        import_dataset(DatasetFile("x", TableFile(str(header), {"user": "u", "item": "i", "time": "t", "label": "y"})),
                       tmp_path / "d", log=lambda *_: None)


def test_attributes_are_text_and_duplicates_are_exact(tmp_path):
    ev = tmp_path / "e.csv"
    ev.write_text("u,i,t,y,code\na,x,1700001000100,1,007\na,x,1700001000900,1,007\na,x,1700001000900,1,007\nb,y,1700002000000,0,7\n")
    spec = DatasetFile("t", TableFile(str(ev), {"user": "u", "item": "i", "time": "t", "label": "y",
                                                 "item.code": "code"}), time_unit="ms")
    s = import_dataset(spec, tmp_path / "d", log=lambda *_: None)
    assert s["rejected"] == {"duplicate row": s["rejected"]["duplicate row"]} and s["rejected_rows"] == 1
    assert EventDatasetLoad(tmp_path / "d", "t").items.column("code").to_pylist() == ["007", "7"]  # two categories


def test_batch_days_end_at_local_midnight():
    import pyarrow as pa

    from edgerec.features.batch import with_local_day

    t = 1767638400 - 3000  # 2026-01-05 18:10 UTC = 2026-01-05 23:40 in Kolkata; +1 h is the next local day
    out = with_local_day(pa.table({"ts": [t, t + 3600]}), TZ).column("local_day").to_pylist()
    assert out[1] == out[0] + 1 and (t + 3600) // 86400 == t // 86400  # UTC would call them one day


def test_duplicates_are_exact_rows_first_copy_kept_against_a_python_reference(tmp_path):
    """The duplicate check compares in full only rows that share (user, item, second); on a log dense in
    such near-copies (same second, another millisecond, position, request or side value) it must drop
    exactly the rows a plain Python scan calls repeats, and keep each first copy."""
    rng = np.random.default_rng(3)
    lines, seen, repeats = ["u,i,t,y,p,r,app"], set(), []
    for row in range(1, 2001):
        rec = (f"u{rng.integers(3)}", f"x{rng.integers(3)}", str(1_700_000_000_000 + int(rng.integers(2)) * 1000 + int(rng.integers(2))),
               str(rng.integers(2)), str(1 + rng.integers(2)), f"s{rng.integers(2)}", ["7.1", "7.2"][rng.integers(2)])
        lines.append(",".join(rec))
        if rec in seen:
            repeats.append(row)
        seen.add(rec)
    (tmp_path / "e.csv").write_text("\n".join(lines) + "\n")
    m = {"user": "u", "item": "i", "time": "t", "label": "y", "position": "p", "request": "r", "side.app": "app"}
    s = import_dataset(DatasetFile("dups", TableFile(str(tmp_path / "e.csv"), m), time_unit="ms"), tmp_path / "d",
                       log=lambda *_: None)
    rejected = pacsv.read_csv(tmp_path / "d" / "dups" / "rejected.csv")
    assert 0 < len(repeats) < 2000 - 100  # near-copies and exact copies both common
    assert rejected.column("row").to_pylist() == repeats and set(rejected.column("reason").to_pylist()) == {"duplicate row"}
    assert s["imported_rows"] == 2000 - len(repeats)


def test_typed_parquet_labels_and_positions_are_checked_without_text(tmp_path):
    """A Parquet log with integer labels and positions and float millisecond times: bad values are
    rejected with the value as written, good ones kept."""
    import pyarrow as pa

    t = pa.table({"u": ["a"] * 6, "i": ["x", "y", "z", "w", "v", "q"],
                  "t": pa.array([1e12, 1e12 + 1000, 1e12 + 2000, 1e12 + 3000, None, 1e12 + 5000]),
                  "y": pa.array([1, 0, 2, 1, 1, None], pa.int64()),
                  "p": pa.array([1, 9999, 1, 0, 1, 2], pa.int32())})
    pq.write_table(t, tmp_path / "e.parquet")
    spec = DatasetFile("typed", TableFile(str(tmp_path / "e.parquet"), {"user": "u", "item": "i", "time": "t",
                                                                        "label": "y", "position": "p"}), time_unit="ms")
    s = import_dataset(spec, tmp_path / "d", log=lambda *_: None)
    r = s["rejected"]
    assert s["imported_rows"] == 2 and s["rejected_rows"] == 4
    assert r["label not 0/1"]["rows"] == 1 and "value '2'" in r["label not 0/1"]["first"]
    assert r["bad position"]["rows"] == 1 and "value '0'" in r["bad position"]["first"]
    assert r["missing value"]["rows"] == 2  # the time of row 5, the label of row 6
    ev = EventDatasetLoad(tmp_path / "d", "typed").events
    assert ev.column("position").to_pylist() == [1, 9999] and ev.column("ts").to_pylist() == [10 ** 9, 10 ** 9 + 1]


def test_integer_millisecond_times_floor_and_range():
    import pyarrow as pa

    secs, bad, out = parse_time(pa.array([1767225600999, -500, None, 5 * 10 ** 15]), "ms", "UTC")
    assert secs.to_pylist()[0] == 1767225600  # floored, not rounded
    assert out.to_pylist() == [False, True, False, True]  # -0.5 s is before 1970, not truncated to 0
    assert bad.to_pylist() == [False] * 4  # a null is a missing value, not an unparseable one


def test_one_rule_per_column_whatever_the_other_rows_or_the_parquet_writer(tmp_path):
    """Review findings on the typed reading: a CSV label '01' is refused whether or not another row
    makes the column text; an empty label in a dictionary-typed Parquet column is a counted 'missing
    value' (it was dropped without a rejected.csv row); a microsecond time read as seconds is
    'unparseable' whether the column is integer or float."""
    import pyarrow as pa

    m = {"user": "u", "item": "i", "time": "t", "label": "y"}
    for name, extra in (("plain", ""), ("texty", "a,w,1700000003,yes\n")):
        (tmp_path / f"{name}.csv").write_text("u,i,t,y\na,x,1700000000,1\na,y,1700000001,0\na,z,1700000002,01\n" + extra)
        s = import_dataset(DatasetFile(name, TableFile(str(tmp_path / f"{name}.csv"), m)), tmp_path / "d",
                           log=lambda *_: None)
        assert s["imported_rows"] == 2 and s["rejected"]["label not 0/1"]["first"].endswith("value '01'")
        assert IdMap.from_table(EventDatasetLoad(tmp_path / "d", name).extras["id_map_item"]).ids.to_pylist() == ["x", "y"]
    t = pa.table({"u": ["a"] * 3, "i": ["x", "y", "z"], "t": [1700000000, 1700000001, 1700000002],
                  "y": pa.array(["1", "", "0"]).dictionary_encode()})
    pq.write_table(t, tmp_path / "dict.parquet")
    s = import_dataset(DatasetFile("dict", TableFile(str(tmp_path / "dict.parquet"), m)), tmp_path / "d", log=lambda *_: None)
    assert s["rejected_rows"] == 1 and s["rejected"]["missing value"]["rows"] == 1
    assert pacsv.read_csv(tmp_path / "d" / "dict" / "rejected.csv").column("row").to_pylist() == [2]
    for arr in (pa.array([1_700_000_000_000_000]), pa.array([1.7e15])):
        _, bad, out = parse_time(arr, "s", "UTC")
        assert bad.to_pylist() == [True] and out.to_pylist() == [False]


def test_a_reimport_leaves_no_table_of_the_earlier_one(tmp_path, monkeypatch):
    """users.parquet of a first import (with a user attribute) must not outlive a re-import without
    one: the loader reads any table it finds, keyed on ids the new import may have renumbered."""
    monkeypatch.setenv("EDGEREC_DATA_DIR", str(tmp_path / "data"))
    spec = _spec(tmp_path)
    import_dataset(spec, tmp_path / "data", log=lambda *_: None)
    assert registry.load("mylog").users is not None
    m = {k: v for k, v in spec.events.map.items() if k != "user.depth"}
    import_dataset(DatasetFile(**{**spec.__dict__, "events": TableFile(spec.events.path, m), "buckets": {}}),
                   tmp_path / "data", log=lambda *_: None)
    assert not (tmp_path / "data" / "mylog" / "users.parquet").exists() and registry.load("mylog").users is None


def test_one_stray_word_in_a_numeric_attribute_is_named_not_made_a_category(tmp_path):
    spec = _spec(tmp_path)
    items = tmp_path / "items.csv"
    items.write_text("sku,price\ni-a,7.10\ni-b,cheap\ni-c,8.25\n" + "".join(f"x-{k},{k}.5\n" for k in range(20)))
    with_items = {**spec.__dict__, "items": TableFile(str(items), {"id": "sku"})}
    with pytest.raises(DataFormatError, match=r"attribute 'price' is numeric .*item 'i-b' has 'cheap'"):
        import_dataset(DatasetFile(**with_items), tmp_path / "a", log=lambda *_: None)
    bucketed = {**with_items, "buckets": {"depth": 2, "price": 4}}
    with pytest.raises(DataFormatError, match=r"item 'i-b': price is 'cheap', not a number"):
        import_dataset(DatasetFile(**bucketed), tmp_path / "b", log=lambda *_: None)
    assert not (tmp_path / "a" / "mylog").exists() and not (tmp_path / "b" / "mylog").exists()


def test_seconds_read_as_milliseconds_are_refused(tmp_path):
    ev = tmp_path / "s.csv"
    ev.write_text("u,i,t,y\n" + "".join(f"u{k % 3},i{k % 4},{1_700_000_000 + 60 * k},{k % 2}\n" for k in range(30)))
    spec = DatasetFile("secs", TableFile(str(ev), {"user": "u", "item": "i", "time": "t", "label": "y"}), time_unit="ms")
    with pytest.raises(DataFormatError, match="look like unix seconds; set time_unit: s"):
        import_dataset(spec, tmp_path / "data", log=lambda *_: None)


def _imported(root: Path) -> dict:
    """What an import wrote, table by table (the summary without its timing)."""
    out = {p.name: pq.read_table(p).to_pylist() for p in sorted((root / "mylog").glob("*.parquet"))}
    out["rejected.csv"] = (root / "mylog" / "rejected.csv").read_text()
    meta = json.loads((root / "mylog" / "meta.json").read_text())
    meta["import"].pop("seconds")
    out["meta"] = meta
    return out


def test_import_streams_the_events_file_in_batches_with_the_same_result(tmp_path, monkeypatch):
    """The events file is checked batch by batch: cut into CSV blocks of a few rows (the bad time
    'yesterday' lands in a later block than the first, so the typed time column must be re-read as
    text) or Parquet batches of 7 rows, the import writes exactly what one batch gives."""
    import edgerec.data.imports as imports

    spec = _spec(tmp_path)
    import_dataset(spec, tmp_path / "whole", log=lambda *_: None)
    whole = _imported(tmp_path / "whole")
    monkeypatch.setattr(imports, "BLOCK_BYTES", 300)
    batches = []
    real = imports._check_batch
    monkeypatch.setattr(imports, "_check_batch", lambda *a: batches.append(a[2].num_rows) or real(*a))
    import_dataset(spec, tmp_path / "blocks", log=lambda *_: None)
    assert len(batches) > 10 and _imported(tmp_path / "blocks") == whole
    pq_path = tmp_path / "events.parquet"
    pq.write_table(pacsv.read_csv(spec.events.path, convert_options=pacsv.ConvertOptions(
        column_types={c: "string" for c in ("who", "what", "when_ms", "shown_at", "got", "visit", "cat", "app")},
        strings_can_be_null=True)), pq_path)
    monkeypatch.setattr(imports, "BATCH_ROWS", 7)
    batches.clear()
    import_dataset(DatasetFile(**{**spec.__dict__, "events": TableFile(str(pq_path), spec.events.map)}),
                   tmp_path / "pq", log=lambda *_: None)
    got = _imported(tmp_path / "pq")
    assert max(batches) == 7 and got["events.parquet"] == whole["events.parquet"]
    counts = lambda d: {k: (v["rows"], re.sub(r" \(line \d+\)", "", v["first"].split(": ", 1)[1])) for k, v in d.items()}
    assert got["rejected.csv"] == whole["rejected.csv"]  # the same rows, for the same reasons, with the same values
    assert counts(got["meta"]["import"]["rejected"]) == counts(whole["meta"]["import"]["rejected"])


def test_only_an_empty_field_is_missing_and_na_words_are_values(tmp_path):
    """Arrow's default null words ('NA', 'n/a', 'null') are values as written: a country code 'NA'
    stays a category, and 'n/a' in a column to bucket is named, not turned into an uncounted gap."""
    spec = _spec(tmp_path)
    items = tmp_path / "items.csv"
    items.write_text("sku,country,price\ni-a,NA,7.10\ni-b,DE,\ni-c,null,8.25\n")
    with_items = {**spec.__dict__, "items": TableFile(str(items), {"id": "sku"}), "buckets": {"depth": 2, "price": 2}}
    import_dataset(DatasetFile(**with_items), tmp_path / "ok", log=lambda *_: None)
    got = pq.read_table(tmp_path / "ok" / "mylog" / "items.parquet").to_pylist()
    assert [r["country"] for r in got] == ["NA", "DE", "null"] and got[1]["price"] is None  # empty: unknown
    meta = json.loads((tmp_path / "ok" / "mylog" / "meta.json").read_text())
    assert "1 of 3 items without a value" in meta["item_features"]["price"]
    items.write_text("sku,country,price\ni-a,NA,7.10\ni-b,DE,n/a\ni-c,FR,8.25\n")
    with pytest.raises(DataFormatError, match=r"item 'i-b': price is 'n/a', not a number.*leave it empty if unknown"):
        import_dataset(DatasetFile(**with_items), tmp_path / "bad", log=lambda *_: None)


def test_date_time_text_with_a_numeric_time_unit_is_refused(tmp_path):
    ev = tmp_path / "iso.csv"
    ev.write_text("u,i,t,y\n" + "".join(f"u{k % 3},i{k % 4},2024-07-01T12:{k:02d}:00,{k % 2}\n" for k in range(30)))
    m = {"user": "u", "item": "i", "time": "t", "label": "y"}
    with pytest.raises(DataFormatError, match=r"'t' holds date-time text \(e.g. 2024-07-01 12:00:00\), not unix seconds; "
                                              r"set time_unit: iso"):
        import_dataset(DatasetFile("iso", TableFile(str(ev), m), time_unit="s"), tmp_path / "data", log=lambda *_: None)
    s = import_dataset(DatasetFile("iso", TableFile(str(ev), m), time_unit="iso", tz="UTC+8"), tmp_path / "data",
                       log=lambda *_: None)
    assert s["imported_rows"] == 30
    ts = sorted(pq.read_table(tmp_path / "data" / "iso" / "events.parquet").column("ts").to_pylist())
    assert ts[0] == 1719806400  # 2024-07-01 12:00 at UTC+8 is 04:00 UTC
    import_dataset(DatasetFile("iso2", TableFile(str(ev), m), time_unit="iso", tz="UTC-03:30"), tmp_path / "data",
                   log=lambda *_: None)  # 12:00 at UTC-03:30 is 15:30 UTC
    assert min(pq.read_table(tmp_path / "data" / "iso2" / "events.parquet").column("ts").to_pylist()) == 1719847800


def test_predict_reads_a_plain_file_in_seconds_even_when_the_log_called_its_ms_column_ts(tmp_path, monkeypatch):
    """The import's unit belongs to the log's layout: a user_id,item_id,ts file is unix seconds, even
    when the log's own millisecond column was also named ts (read as ms it put every row in 1970)."""
    from edgerec.serve.predict import _input_format

    monkeypatch.setenv("EDGEREC_DATA_DIR", str(tmp_path / "data"))
    spec = _spec(tmp_path, name="tslog")
    spec.events.map["time"] = "ts"
    ev = Path(spec.events.path)
    ev.write_text(ev.read_text().replace("when_ms", "ts", 1))
    import_dataset(spec, tmp_path / "data", log=lambda *_: None)
    cols, unit, _ = _input_format("tslog", ["user_id", "item_id", "ts"], None, None)
    assert cols == {"user": "user_id", "item": "item_id", "time": "ts"} and unit == "s"
    cols, unit, _ = _input_format("tslog", ["who", "what", "ts", "app"], None, None)  # the log's own layout
    assert cols == {"user": "who", "item": "what", "time": "ts"} and unit == "ms"


def _import_text(tmp_path: Path, text: str, **kw) -> dict:
    ev = tmp_path / "ev.csv"
    ev.write_text(text)
    spec = DatasetFile(name="small", events=TableFile(str(ev), {"user": "u", "item": "i", "time": "t", "label": "l", **kw}))
    return import_dataset(spec, tmp_path / "data", log=lambda *_: None)


def test_csv_row_numbers_count_empty_lines_and_a_quoted_newline_works_at_any_block_size(tmp_path, monkeypatch):
    """An empty line is a rejected row (Arrow skipped it, and every later row number was one short);
    a quoted value spanning lines imports whatever the block size (it failed when a block ended inside it);
    a row missing several fields counts once."""
    import edgerec.data.imports as im

    s = _import_text(tmp_path, "u,i,t,l\na,b,1720000000,1\n\nc,d,1720000001,2\n")
    assert s["read_rows"] == 3 and s["rejected"]["missing value"]["rows"] == 1
    assert "row 3 (line 4), column 'l'" in s["rejected"]["label not 0/1"]["first"]
    text = "u,i,t,l,note\n" + "".join(f'u{k},i{k % 3},{1720000000 + k},1,"note\nline {k}"\n' for k in range(30))
    for block in (16 << 20, 100):
        monkeypatch.setattr(im, "BLOCK_BYTES", block)
        s = _import_text(tmp_path, text, **{"side.note": "note"})
        assert s["imported_rows"] == 30, block


def test_a_ragged_row_and_an_empty_file_are_named(tmp_path):
    with pytest.raises(DataFormatError, match="has 5 fields, the header 4: 'c,d,1720000001,0,extra'. Quote"):
        _import_text(tmp_path, "u,i,t,l\na,b,1720000000,1\nc,d,1720000001,0,extra\n")
    with pytest.raises(DataFormatError, match="the file is empty"):
        _import_text(tmp_path, "")


def test_a_bucket_counts_the_users_a_users_file_does_not_list(tmp_path):
    ev, us = tmp_path / "ev.csv", tmp_path / "us.csv"
    ev.write_text("u,i,t,l\n" + "".join(f"u{k},i{k % 3},{1720000000 + k},1\n" for k in range(6)))
    us.write_text("u,depth\nu0,0.5\nu1,0.7\n")
    import_dataset(DatasetFile(name="g8", events=TableFile(str(ev), {"user": "u", "item": "i", "time": "t", "label": "l"}),
                               users=TableFile(str(us), {}), buckets={"depth": 2}), tmp_path / "data", log=lambda *_: None)
    meta = json.loads((tmp_path / "data" / "g8" / "meta.json").read_text())
    assert "4 of 6 users without a value" in meta["user_features"]["depth"]
