"""Scale-out (issue 21): out-of-core shards give the in-memory batches, torchrun DDP matches one
process, frequency-capped item ids, and the error paths of all three."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from edgerec.data.shards import ShardedSamples, data_settings, folder_differences, write_shards
from edgerec.errors import ConfigError, EdgerecError
from edgerec.train.config import load_experiment
from edgerec.train.experiment import build_model, build_samples

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ctr.yaml"
QUIET = lambda *a, **k: None  # noqa: E731


def _cfg(tmp_path: Path, expid: str = "COUPA_test", *overrides: str):
    return load_experiment(CONFIG, expid, [f"output_dir={tmp_path / 'runs'}", f"ledger={tmp_path / 'ledger.jsonl'}",
                                           *overrides])


@pytest.fixture(scope="module")
def in_memory_and_shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    cfg = _cfg(tmp)
    samples = build_samples(cfg)
    path = write_shards(samples, tmp / "shards", data_settings(cfg), rows_per_group=1000)  # ~21 row groups
    return cfg, samples, ShardedSamples(path, window=3)


def _assert_same_batches(a, b) -> int:
    a, b = list(a), list(b)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k  # dtype too: the store is narrower
    return len(a)


def test_sharded_batches_equal_the_in_memory_ones_for_the_same_seed(in_memory_and_shards):
    _, mem, sh = in_memory_and_shards
    assert (sh.store_item.dtype, sh.store_slots.dtype, sh.store_position.dtype) == (np.int32, np.int32, np.int16)
    mem.shuffle_groups = sh.shuffle_groups  # (rows per group, window): the out-of-core order
    try:
        for seed in (0, 7):
            n = _assert_same_batches(mem.batches("train", 512, shuffle=True, seed=seed),
                                     sh.batches("train", 512, shuffle=True, seed=seed))
            assert n == -(-len(mem.splits["train"]) // 512)
        for split in ("valid", "test"):  # evaluation: split order, batches across row groups
            _assert_same_batches(mem.batches(split, 700), sh.batches(split, 700))
        for rank in (0, 1):  # a rank's slice of every global batch
            _assert_same_batches(mem.batches("train", 512, shuffle=True, seed=3, rank=rank, world=2, drop_short=True),
                                 sh.batches("train", 512, shuffle=True, seed=3, rank=rank, world=2, drop_short=True))
        for seed in (3, 4):  # the ranks' slices of each global batch are that batch, in order, nothing twice
            whole = [b["item"] for b in sh.batches("train", 515, shuffle=True, seed=seed)]
            parts = [list(sh.batches("train", 515, shuffle=True, seed=seed, rank=r, world=3)) for r in range(3)]
            assert all(torch.equal(torch.cat([p[j]["item"] for p in parts]), whole[j]) for j in range(len(whole)))
        orders = [np.concatenate([b["item"].numpy() for b in sh.batches("train", 512, shuffle=True, seed=s)])
                  for s in (1, 2)]
        assert not np.array_equal(*orders)  # the seed shuffles: a fixed order would pass the parity above too
    finally:
        mem.shuffle_groups = None
    for split in ("train", "valid", "test"):
        m, s = mem.splits[split].metric_subsets(), sh.splits[split].metric_subsets()
        assert m.keys() == s.keys() and all(np.array_equal(m[k], s[k]) for k in m)


def test_training_from_shards_equals_training_in_memory(in_memory_and_shards):
    from edgerec.train.trainer import Trainer

    cfg, mem, sh = in_memory_and_shards
    cfg = copy.deepcopy(cfg)  # the fixture's config is shared by the module's tests
    cfg.train.epochs = 1
    mem.shuffle_groups = sh.shuffle_groups
    try:
        fits = []
        for samples in (mem, sh):
            model = build_model(cfg, samples.spec)
            fits.append((Trainer(cfg.train, log=QUIET).fit(model, samples), model.state_dict()))
    finally:
        mem.shuffle_groups = None
    (f1, s1), (f2, s2) = fits
    assert f1.valid == f2.valid
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def _train_cli(tmp: Path, expid: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEREC_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "edgerec", "train", "--config", str(CONFIG), "--expid", expid,
                           "--no-progress", "--set", "train.epochs=1", "--set", f"output_dir={tmp / 'runs'}",
                           "--set", f"ledger={tmp / 'ledger.jsonl'}", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


# COUPA_test: no batch normalization, so the runs agree up to float sums. DIN's Dice activation holds a
# BatchNorm that normalizes each rank's half batch with its own statistics (SyncBatchNorm is CUDA-only):
# close, not equal. The tolerances are of the validation AUC after one epoch on o2o-sim:tiny.
@pytest.mark.parametrize("expid,tol", [("COUPA_test", 2e-3), ("DIN_test_impression", 1e-2)])
def test_torchrun_with_two_processes_matches_one_and_its_checkpoint_serves(tmp_path, expid, tol):
    one = _train_cli(tmp_path, expid, "--set", "data.out_of_core=true")
    assert one.returncode == 0, one.stderr[-2000:]
    two = _train_cli(tmp_path, expid, "--nproc", "2")
    assert two.returncode == 0, two.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [r["processes"] for r in rows] == [1, 2]  # rank 1 wrote no ledger row
    # same global batches and seed; DDP averages the two half-batch gradients
    assert abs(rows[0]["valid"]["AUC"] - rows[1]["valid"]["AUC"]) <= tol, (rows[0]["valid"], rows[1]["valid"])
    assert abs(rows[0]["valid"]["logloss"] - rows[1]["valid"]["logloss"]) <= tol
    assert two.stdout.count("epoch  1") == 1  # only rank 0 prints
    run_dir = rows[1]["run_dir"]
    assert len(list((tmp_path / "runs" / expid).iterdir())) == 2
    if expid != "COUPA_test":
        return

    from fastapi.testclient import TestClient

    from edgerec.serve.app import create_app
    from edgerec.serve.server import ServiceRecipe, build_service
    from edgerec.train.experiment import load_run
    from edgerec.train.trainer import evaluate_split

    cfg, model, samples = load_run(run_dir)
    assert abs(evaluate_split(model, samples, "test", ["AUC"])["AUC"] - rows[1]["test"]["AUC"]) < 1e-9
    c = TestClient(create_app(build_service(ServiceRecipe(store="memory", run=run_dir))))
    r = c.post("/recommend", json={"user_id": int(samples.user_ids[0]), "ts": 1767571200 + 20 * 86400, "k": 5})
    assert r.status_code == 200 and len(r.json()["items"]) == 5, r.text


def test_a_loss_that_diverges_on_one_rank_stops_every_rank_with_a_message(tmp_path):
    """Rank 1's loss is NaN (tests/nan_on_rank1.py), rank 0's is finite: both stop at step 0 with
    edgerec's message and exit status 2; torchrun's own traceback is replaced by one line."""
    cmd = [sys.executable, "-m", "edgerec.train.torchrun", "--standalone", "--nproc-per-node=2", "-m",
           "tests.nan_on_rank1", "train", "--config", str(CONFIG), "--expid", "COUPA_test", "--no-progress",
           "--set", f"output_dir={tmp_path / 'runs'}", "--set", f"ledger={tmp_path / 'ledger.jsonl'}"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "EDGEREC_THREADS": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2, r.stderr[-3000:]
    assert "NaN or infinite at epoch 1 step 0 on at least one of the 2 ranks" in r.stderr, r.stderr[-3000:]
    assert re.search(r"error: torchrun: rank [01] stopped with exit status 2", r.stderr)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / "ledger.jsonl").exists()


def test_capped_items_keep_the_most_exposed_of_the_training_period(tmp_path):
    full = build_samples(_cfg(tmp_path))
    cap = 40
    capped = build_samples(_cfg(tmp_path, "COUPA_test", f"data.max_items={cap}"))
    assert capped.spec.n_items == cap + 2 and len(capped.item_ids) == cap
    tr = full.splits["train"]
    counts = np.bincount(tr.item, minlength=full.spec.n_items)[1:-1]  # real items 1..V
    top = np.argsort(-counts, kind="stable")[:cap]
    top = np.sort(top[counts[top] > 0])
    assert len(top) == cap  # tiny exposes more than 40 items in training
    assert np.array_equal(capped.item_ids, full.item_ids[top])  # counted on the training period only
    oov = capped.spec.oov_item
    for split in ("train", "valid", "test"):
        a, b = full.splits[split], capped.splits[split]
        kept = np.isin(a.item, top + 1)
        assert np.array_equal(full.item_ids[a.item[kept] - 1], capped.item_ids[b.item[kept] - 1])  # same raw ids
        assert (b.item[~kept] == oov).all()
        assert np.array_equal(a.repeat, b.repeat) and np.array_equal(a.hist_end, b.hist_end)  # histories unchanged
    share = float((np.concatenate([capped.splits[s].item for s in ("train", "valid", "test")]) == oov).mean())
    assert capped.info["capped_sample_share"] == round(share, 5) and 0 < share < 1
    model = build_model(_cfg(tmp_path), capped.spec)  # the table has cap + 2 rows
    batch = next(capped.batches("train", 64))
    assert model(batch)["y_pred"].shape == (64,)


def test_bad_shard_input_gets_a_clear_error(tmp_path, in_memory_and_shards):
    cfg, mem, sh = in_memory_and_shards
    with pytest.raises(EdgerecError, match="not a shard folder"):
        ShardedSamples(tmp_path)
    other = {**data_settings(cfg), "split_fractions": [0.7, 0.2, 0.1]}
    with pytest.raises(ConfigError, match="split_fractions: shards"):
        sh.check_data(other, "X")
    with pytest.raises(ConfigError, match="impression protocol"):
        build_samples(load_experiment(CONFIG, "DIN_test", ["data.max_items=10"]))
    with pytest.raises(ConfigError, match=r"data.max_items must be >= 1"):
        load_experiment(CONFIG, "COUPA_test", ["data.max_items=0"])
    with pytest.raises(ConfigError, match="resample"):  # said when the config loads, before any work
        load_experiment(CONFIG, "DIN_test", ["data.train_negatives=resample", "data.out_of_core=true"])
    mem.resample_negatives = True
    try:
        with pytest.raises(ConfigError, match="resample"):
            write_shards(mem, tmp_path / "x", {})
    finally:
        mem.resample_negatives = False
    assert not (tmp_path / "x").exists()


def test_a_damaged_shard_folder_is_named_not_a_traceback(tmp_path, in_memory_and_shards):
    import shutil

    cfg, mem, sh = in_memory_and_shards
    with pytest.raises(EdgerecError, match="not a shard folder; it would be replaced"):
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep me")
        write_shards(mem, tmp_path / "mine", {})
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    for damage in ("train.parquet", "store_item.npy", "truncate", "manifest"):
        d = tmp_path / damage
        shutil.copytree(sh.path, d)
        if damage == "truncate":
            (d / "valid.parquet").write_bytes((sh.path / "test.parquet").read_bytes())  # other row count
        elif damage == "manifest":
            m = json.loads((d / "manifest.json").read_text())
            del m["rows"]
            (d / "manifest.json").write_text(json.dumps(m))
        else:
            (d / damage).unlink()
        with pytest.raises(EdgerecError, match=r"damaged shard folder .*write the shards again"):
            ShardedSamples(d)


def test_a_failed_shard_write_leaves_nothing_behind(tmp_path, in_memory_and_shards, monkeypatch):
    import edgerec.data.shards as shards

    cfg, mem, _ = in_memory_and_shards
    good = write_shards(mem, tmp_path / "s", data_settings(cfg), rows_per_group=5000)
    before = (good / "manifest.json").read_text()
    real, calls = shards.np.save, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(shards.np, "save", failing)
    with pytest.raises(OSError):
        write_shards(mem, tmp_path / "s", data_settings(cfg), rows_per_group=1000)
    assert (good / "manifest.json").read_text() == before  # the old shards are intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temp folder left


def test_a_write_killed_with_sigkill_leaves_a_temp_folder_that_the_next_write_removes(tmp_path, in_memory_and_shards):
    """SIGKILL (or the OOM killer) skips the cleanup of a failed write; the next write of the same
    folder removes that temp folder (its lock died with its process) and keeps one being written."""
    from edgerec.data.shards import _locked_temp_folder, remove_abandoned_temp_folders

    cfg, mem, _ = in_memory_and_shards
    out = tmp_path / "s"
    kill = ("import os, signal, sys; from pathlib import Path; from edgerec.data.shards import shard_folder; "
            "cm = shard_folder(Path(sys.argv[1])); tmp = cm.__enter__(); (tmp / 'half.npy').write_bytes(b'x'); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", kill, str(out)], cwd=ROOT, timeout=120)
    assert r.returncode == -9
    abandoned = sorted(p.name for p in tmp_path.iterdir())
    assert len(abandoned) == 2 and abandoned[1] == abandoned[0] + ".lock"  # the folder and its lock file
    assert (tmp_path / abandoned[0] / "half.npy").is_file()
    with _locked_temp_folder(out) as live:  # a write of `out` in progress elsewhere: its lock is held
        assert remove_abandoned_temp_folders(out) == [tmp_path / abandoned[0]]
        assert live.exists() and Path(f"{live}.lock").exists()
        live.rmdir()  # that writer finished
    write_shards(mem, out, data_settings(cfg), rows_per_group=5000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temp folder, no lock file left


def test_out_of_core_names_the_shards_of_another_prepare_of_the_dataset(tmp_path):
    """Shards built from another prepare (or import) of a dataset are never reused; a new build
    names them in the log, and leaves them (another machine sharing output_dir may train on them)."""
    from edgerec.data.shards import dataset_fingerprint
    from edgerec.train.experiment import ensure_shards

    cfg = _cfg(tmp_path, "COUPA_test", "data.out_of_core=true")
    root = tmp_path / "runs" / "_shards"
    now = dataset_fingerprint(cfg.dataset)
    folders = {"stale": (cfg.dataset, "0123456789abcdef"), "unknown": (cfg.dataset, None),
               "other-settings": (cfg.dataset, now), ".stale.tmp-abc": (cfg.dataset, "0123456789abcdef"),
               "never-prepared": ("o2o-sim:small", "0123456789abcdef")}
    for name, (dataset, meta) in folders.items():
        (root / name).mkdir(parents=True)
        (root / name / "manifest.json").write_text(json.dumps({"data": {"dataset": dataset}, "dataset_meta": meta}))
    logged = []
    path = ensure_shards(cfg, logged.append)
    notes = [x for x in logged if "note:" in x]
    assert len(notes) == 1 and str(root / "stale") in notes[0] and "nothing reuses" in notes[0], logged
    assert sorted(p.name for p in root.iterdir()) == sorted([path.name, *folders])  # nothing removed
    assert ensure_shards(cfg, logged.append) == path and len(logged) == 2  # reused: not rebuilt, no new note


def test_cli_batch_shards_then_train_on_them_and_errors_exit_2(tmp_path, capsys):
    from edgerec.cli import main

    base = ["--set", f"output_dir={tmp_path / 'runs'}", "--set", f"ledger={tmp_path / 'l.jsonl'}"]
    assert main(["batch", "--shards", f"{CONFIG}:COUPA_test", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "data.shards=" in out
    shards = tmp_path / "b" / "shards"
    assert main(["train", "--config", str(CONFIG), "--expid", "COUPA_test", "--no-progress", "--set", "train.epochs=1",
                 "--set", f"data.shards={shards}", *base]) == 0
    capsys.readouterr()
    # L is cut per batch: the shards of COUPA_test (L=10) train an L=5 run, whose checkpoint says 5 and loads
    assert main(["train", "--config", str(CONFIG), "--expid", "COUPA_test", "--no-progress", "--set", "train.epochs=1",
                 "--set", f"data.shards={shards}", "--set", "data.max_len=5", *base]) == 0
    run = json.loads((tmp_path / "l.jsonl").read_text().splitlines()[-1])["run_dir"]
    assert json.loads((Path(run) / "config.json").read_text())["feature_spec"]["max_len"] == 5
    assert main(["eval", "--run", run]) == 0
    capsys.readouterr()
    # the shards were built with other data settings than this config asks for
    assert main(["train", "--config", str(CONFIG), "--expid", "COUPA_test", "--set", f"data.shards={shards}",
                 "--set", "data.split_fractions=[0.7,0.2,0.1]", *base]) == 2
    assert "split_fractions" in capsys.readouterr().err
    assert main(["train", "--config", str(CONFIG), "--expid", "COUPA_test", "--set", f"data.shards={tmp_path}",
                 *base]) == 2
    assert "not a shard folder" in capsys.readouterr().err
    assert main(["batch", "--shards", "configs/ctr.yaml", "--out", str(tmp_path / "c")]) == 2
    assert "CONFIG:EXPID" in capsys.readouterr().err
    assert main(["train", "--config", str(CONFIG), "--expid", "COUPA_test", "--nproc", "2",
                 "--set", "train.lr=-1", *base]) == 2  # a config error is reported once, before any rank starts
    assert "train.lr" in capsys.readouterr().err


@pytest.mark.parametrize("overrides", [(), ("data.max_items=40",)], ids=["all-items", "capped"])
def test_spark_writes_the_same_shards_as_the_sample_builders(tmp_path, overrides, capsys):
    """`edgerec batch --shards --engine spark` (a Spark job) and the in-memory builders write the
    same folder, file by file, so a Spark job's output trains directly."""
    from edgerec.cli import main

    sets = [a for o in ("data.rows_per_group=700", *overrides) for a in ("--set", o)]  # ~30 row groups
    for engine in ("polars", "spark"):
        assert main(["batch", "--shards", f"{CONFIG}:COUPA_test", "--engine", engine, *sets,
                     "--out", str(tmp_path / engine)]) == 0
    assert "built and written on Spark" in capsys.readouterr().out
    assert folder_differences(tmp_path / "polars" / "shards", tmp_path / "spark" / "shards") == []
    items = np.load(tmp_path / "spark" / "shards" / "store_item.npy")
    items[len(items) // 2] += 1  # one stored click off: the comparison must see it
    np.save(tmp_path / "spark" / "shards" / "store_item.npy", items)
    assert folder_differences(tmp_path / "polars" / "shards", tmp_path / "spark" / "shards") == ["store_item.npy"]
    assert sorted(p.name for p in (tmp_path / "spark").iterdir()) == ["shards"]  # Spark's temp output is gone
    if overrides:
        m = json.loads((tmp_path / "spark" / "shards" / "manifest.json").read_text())
        assert m["spec"]["n_items"] == 42 and 0 < m["info"]["capped_sample_share"] < 1


def test_spark_shards_of_an_imported_log_with_unknown_positions_equal_the_local_ones(tmp_path, monkeypatch, capsys):
    """A user's own log, imported: string ids (id maps travel with the shards), local time UTC+8,
    bucketed attributes, and one exposure in eight with its display position left empty."""
    import pyarrow.csv as pacsv

    from edgerec.cli import main
    from edgerec.data.example import IMPORT_ARGS, write_example_log

    monkeypatch.setenv("EDGEREC_DATA_DIR", str(tmp_path / "data"))
    paths = write_example_log(tmp_path / "ex", "tiny")
    ev = pacsv.read_csv(paths["events"])
    slot = ev.column("slot").to_pylist()
    ev = ev.set_column(ev.schema.get_field_index("slot"), "slot",
                       pa.array([None if i % 8 == 3 else v for i, v in enumerate(slot)], pa.int64()))
    pacsv.write_csv(ev, paths["events"])
    assert main(["data", "import", "myfeed", "--events", str(paths["events"]), "--items", str(paths["items"]),
                 *IMPORT_ARGS]) == 0
    assert "rejected 0 rows" in capsys.readouterr().out
    for engine in ("polars", "spark"):
        assert main(["batch", "--shards", f"{ROOT / 'configs' / 'your_data.yaml'}:COUPA_mine", "--engine", engine,
                     "--set", "data.rows_per_group=900", "--out", str(tmp_path / engine)]) == 0
    local, spark = tmp_path / "polars" / "shards", tmp_path / "spark" / "shards"
    assert folder_differences(local, spark) == []
    assert (spark / "id_map_user.parquet").is_file() and (spark / "id_map_item.parquet").is_file()
    assert 0 in set(np.unique(pq.read_table(spark / "train.parquet").column("position").to_numpy()))  # unknown


def test_an_unreachable_spark_master_is_a_clear_error_and_leaves_nothing(tmp_path):
    """Spark's standalone client retries a master that does not answer (~1 min), then stops its
    context; edgerec says which master and what to check, exits 2, and writes nothing."""
    import socket

    with socket.socket() as s:  # a port with nothing listening on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "edgerec", "batch", "--shards", f"{CONFIG}:COUPA_test", "--engine", "spark",
                        "--spark-master", f"spark://127.0.0.1:{port}", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"error: --spark-master spark://127.0.0.1:{port}: Spark could not start a session there" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_spark_shards_refuse_the_dicycle_protocol_and_a_failure_leaves_nothing(tmp_path, capsys, monkeypatch):
    import edgerec.data.shards_spark as spark_shards
    from edgerec.cli import main

    assert main(["batch", "--shards", f"{CONFIG}:DIN_test", "--engine", "spark", "--out", str(tmp_path / "d")]) == 2
    assert "drop --engine spark" in capsys.readouterr().err
    assert not (tmp_path / "d" / "shards").exists()

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spark_shards, "_write_store", full_disk)
    with pytest.raises(OSError):
        main(["batch", "--shards", f"{CONFIG}:COUPA_test", "--engine", "spark", "--out", str(tmp_path / "e")])
    assert list((tmp_path / "e").iterdir()) == []  # no temp folder, no half-written shards
