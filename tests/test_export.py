"""ONNX export of stage 2 and the ONNX Runtime serving engine: parity with PyTorch (empty histories and
unknown items included), same top-k through the service, the folder's contract, and the error paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from edgerec.errors import EdgerecError
from edgerec.features.store import MemoryStore
from edgerec.serve import export as ex
from edgerec.serve.onnx_ranker import OnnxRanker, onnx_ranker, read_contract
from edgerec.serve.service import CandidateIndex, Ranker, RecommendService
from edgerec.serve.stream import events_from_log

ROOT = Path(__file__).resolve().parents[1]

# every exportable model, and the COUPA switches that change its serving graph
CASES = {
    "DIN": ("DIN_test_impression", []),
    "DiCycle": ("DiCycle_test", []),
    "COUPA": ("COUPA_test", []),
    "COUPA same-item": ("COUPA_test", ["model_args.pp_same_item=true"]),
    "COUPA w/o TPP": ("COUPA_test", ["model_args.use_point_process=false"]),
    "COUPA position feature": ("COUPA_test", ["model_args.position_mode=feature"]),
}


def _train(tmp_path_factory, expid: str, overrides: list[str]):
    from edgerec.train.config import load_experiment
    from edgerec.train.experiment import run_experiment

    out = tmp_path_factory.mktemp("runs")
    cfg = load_experiment(ROOT / "configs" / "ctr.yaml", expid,
                          ["train.epochs=1", f"output_dir={out}", f"ledger={out / 'ledger.jsonl'}", *overrides])
    return run_experiment(cfg, log=lambda *a, **k: None).run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return {name: _train(tmp_path_factory, expid, ov) for name, (expid, ov) in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_export_matches_pytorch_on_two_candidate_counts(runs, name):
    contract = ex.export_run(runs[name], quiet=True)
    p = contract["parity"]
    assert p["max_abs_logit"] <= 1e-4 and p["same_top20"] and len(p["candidate_counts"]) == 2
    folder = Path(runs[name]) / "onnx"
    assert read_contract(folder) == contract  # model.onnx is the file export.json describes
    assert contract["model_bytes"] == (folder / ex.MODEL_FILE).stat().st_size
    assert "hist_position" not in contract["inputs"]  # served without the display position


@pytest.fixture(scope="module")
def coupa(runs):
    ex.export_run(runs["COUPA"], quiet=True)
    return Ranker.from_run(runs["COUPA"])


def _requests(ranker, n: int = 12):
    """n validation requests plus one with an empty history, against 50 catalogue items and one
    unknown item, encoded the way the service encodes them."""
    return ex._check_requests(ranker, n, 50)


@pytest.mark.parametrize("name", ["DIN", "DiCycle", "COUPA", "COUPA same-item"])
def test_onnx_engine_scores_like_the_torch_engine(runs, name):
    ranker = Ranker.from_run(runs[name])
    ex.export_run(runs[name], quiet=True)
    engine = OnnxRanker(ranker, Path(runs[name]) / "onnx")
    raw = ranker.item_ids
    for req, items in _requests(ranker):
        cand = np.concatenate([raw[items[:-1] - 1], [-5]])  # raw ids, the last one unknown to the run
        torch_scores, onnx_scores = ranker.score(req, cand), engine.score(req, cand)
        assert np.abs(torch_scores - onnx_scores).max() <= 1e-5
        # and both are the trained model's own forward over the candidates, not just each other
        assert np.abs(torch_scores - ranker.single_pass(req, cand)).max() <= 1e-5
        assert ex.same_top(torch_scores, onnx_scores, 20, 1e-6)  # the same top 20, up to ties within 1e-6


def test_an_empty_history_is_scored_by_both_graphs(runs):
    """A known user's first request has no history: DiCycle's absolute-time encoding used to fail on
    it in PyTorch (view(-1) of 0 behaviours), and ONNX Reshapes misread a 0 axis."""
    for name in ("DIN", "DiCycle", "COUPA"):
        ranker = Ranker.from_run(runs[name])
        req = ranker.encode_request(int(ranker.user_ids[0]), 1767571200, {"hist_item": [], "hist_ts": [],
                                                                          "hist_position": []})
        cand = ranker.item_ids[:30]
        scores = ranker.score(req, cand)
        assert np.isfinite(scores).all() and scores.shape == (30,)
        ex.export_run(runs[name], quiet=True)
        onnx_scores = OnnxRanker(ranker, Path(runs[name]) / "onnx").score(req, cand)
        assert np.abs(scores - onnx_scores).max() <= 1e-5, name


def test_service_on_either_engine_gives_the_same_top_k(coupa, runs):
    from edgerec.data import registry

    ds = registry.load("o2o-sim:tiny")
    events = sorted(events_from_log(ds.events), key=lambda e: e.ts)
    store = MemoryStore()
    store.apply(events[: len(events) // 2], coupa.definition)
    index = CandidateIndex.from_dataset(ds)
    services = [RecommendService(r, index, store) for r in (coupa, onnx_ranker(coupa, runs["COUPA"], quiet=True))]
    t = events[len(events) // 2].ts
    users = sorted({e.user_id for e in events})[:15]
    for u in users:
        a, b = (s.recommend(u, ts=t, n_candidates=100, k=20) for s in services)
        assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]]
        assert np.allclose([i["score"] for i in a["items"]], [i["score"] for i in b["items"]], atol=1e-5)


def test_id_tables_map_the_clients_ids_to_the_models_indices(coupa, runs):
    folder = Path(runs["COUPA"]) / "onnx"
    contract = read_contract(folder)
    items = pq.read_table(folder / "ids_item.parquet").to_pydict()
    assert len(items["id"]) == contract["id_tables"]["item"]["rows"]
    some = np.asarray(items["id"][::7])
    assert coupa.item_index(some).tolist() == items["index"][::7]
    users = pq.read_table(folder / "ids_user.parquet").to_pydict()
    assert [coupa.user_index(u) for u in users["id"][:5]] == users["index"][:5]
    assert contract["oov_item"] == coupa.samples.spec.oov_item and contract["tz"] == coupa.samples.spec.tz


def test_a_failed_parity_check_writes_nothing(coupa, tmp_path):
    out = tmp_path / "export"
    with pytest.raises(EdgerecError, match="does not match PyTorch"):
        ex.export_ranker(coupa, out, ex.ExportSpec(atol=0.0, requests=4))  # no float graph is that exact
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no half-written folder, no temp left


def test_a_damaged_export_is_refused_and_a_stale_one_is_remade(coupa, runs, tmp_path):
    import shutil

    folder = tmp_path / "onnx"
    shutil.copytree(Path(runs["COUPA"]) / "onnx", folder)
    model = folder / ex.MODEL_FILE
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.raises(EdgerecError, match="missing or damaged"):
        read_contract(folder)
    (folder / ex.CONTRACT_FILE).write_text("{not json")
    with pytest.raises(EdgerecError, match="damaged"):
        read_contract(folder)
    # the run's own export, marked as made from other weights: serve re-exports it before serving
    own = Path(runs["COUPA"]) / "onnx" / ex.CONTRACT_FILE
    c = json.loads(own.read_text())
    c["weights_sha256"] = "0" * 64
    own.write_text(json.dumps(c))
    engine = onnx_ranker(coupa, runs["COUPA"], quiet=True)
    assert engine.contract["weights_sha256"] != "0" * 64


def test_cli_export_and_its_errors(runs, tmp_path):
    out = tmp_path / "exp"
    proc = subprocess.run([sys.executable, "-m", "edgerec.cli", "export", "--run", runs["DIN"], "--format", "onnx",
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "max |Δ logit|" in proc.stdout and (out / ex.MODEL_FILE).is_file()
    assert "Warning" not in proc.stderr  # the tracer's notes stay inside
    bad = subprocess.run([sys.executable, "-m", "edgerec.cli", "export", "--run", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "nope" in bad.stderr


def test_serve_refuses_an_unknown_engine():
    from edgerec.serve.server import ServiceRecipe, build_ranker

    with pytest.raises(EdgerecError, match="engine must be one of torch, onnx"):
        build_ranker(ServiceRecipe(store="memory", run="x", engine="tensorrt"))


def test_a_model_without_an_export_is_refused_by_name(tmp_path_factory):
    run = _train(tmp_path_factory, "GRU4Rec_test", [])
    with pytest.raises(EdgerecError, match="GRU4Rec has no ONNX export"):
        ex.export_run(run, quiet=True)


def test_bench_export_measures_both_engines(tmp_path):
    sys.path.insert(0, str(ROOT))
    from bench.export import main

    r = main(["--expids", "COUPA_test", "--dataset", "o2o-sim:tiny", "--out", str(tmp_path / "export.json")])
    m = r["models"][0]
    assert m["parity"]["max_abs_logit"] <= 1e-4 and set(m["stage2_ms"]) == {"torch", "onnx"}
    assert json.loads((tmp_path / "export.json").read_text())["models"][0]["model_bytes"] == m["model_bytes"]


def test_export_replaces_only_an_empty_folder_or_an_earlier_export(runs, tmp_path):
    with pytest.raises(EdgerecError, match="holds other files"):
        ex.export_run(runs["DIN"], runs["DIN"], quiet=True)  # --out RUN: the run itself is never removed
    assert (Path(runs["DIN"]) / "model.safetensors").is_file()
    (tmp_path / "f").write_text("x")
    with pytest.raises(EdgerecError, match="not a folder"):
        ex.export_run(runs["DIN"], tmp_path / "f", quiet=True)
    ex.export_run(runs["DIN"], tmp_path / "e", quiet=True)
    ex.export_run(runs["DIN"], tmp_path / "e", quiet=True)  # an earlier export is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "f"]
