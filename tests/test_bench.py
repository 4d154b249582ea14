"""The benchmark scripts' own arithmetic: the ablation table and merging result files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ctr import ablation_markdown, main as ctr_main  # noqa: E402


def _run(model, seed, auc, L=50):
    return {"model": model, "L": L, "seed": seed, "best_epoch": 1, "epochs_run": 2, "train_seconds": 1.0,
            "valid": {"AUC": auc}, "test": {"AUC": auc, "GAUC": auc, "logloss": 0.5}, "config_hash": "x",
            "run_dir": "r"}


def test_ablation_costs_are_paired_by_seed():
    runs = [_run("DiCycle", 1, 0.90), _run("DiCycle", 2, 0.80), _run("DiCycle w/o ATC", 1, 0.88),
            _run("DiCycle w/o ATC", 2, 0.78)]
    table = ablation_markdown({"runs": runs, "models": ["DiCycle", "DiCycle w/o ATC"]})
    row = next(line for line in table.splitlines() if line.startswith("| DiCycle w/o ATC"))
    # unpaired, the seeds' spread (0.07) would swamp the cost; paired, every seed loses exactly 0.02
    assert "-0.0200 ± 0.0000" in row and "0.8300 ± 0.0707" in row


def test_merge_collects_runs_without_training(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"runs": [_run("DiCycle", s, 0.9) for s in (1, 2, 3)]}))
    b.write_text(json.dumps({"runs": [_run("DIN", s, 0.88) for s in (1, 2, 3)] + [_run("DIN", 1, 0.1, L=200)]}))
    out = tmp_path / "m.json"
    rep = ctr_main(["--models", "DIN,DiCycle", "--lens", "50", "--merge", f"{a},{b}", "--out", str(out), "--no-docs"])
    assert len(rep["runs"]) == 6 and {r["source"] for r in rep["runs"]} == {"a.json", "b.json"}
    din = next(s for s in rep["summary"] if s["model"] == "DIN")
    assert din["AUC"] == pytest.approx(0.88) and din["n"] == 3
    assert json.loads(out.read_text())["complete"] is True


def test_coupa_merge_unions_parallel_queues(tmp_path, monkeypatch):
    import json

    import bench.coupa as coupa

    monkeypatch.setattr(coupa, "replace_block", lambda *a, **k: None)
    truth = {"relevance_auc": 0.8, "request_ndcg@10": 0.9, "examination_spearman": {"deep": 1, "medium": 1, "shallow": 1}}
    run = {"test": {"AUC": 0.7, "GAUC": 0.6}, "truth": truth}
    base = {"benchmark": "coupa", "git": "x", "seeds": [1], "variants": ["COUPA"]}
    (tmp_path / "a.json").write_text(json.dumps({**base, "runs": [{"variant": "PAL", "seed": 1, **run},
                                                                 {"variant": "COUPA", "seed": 1, **run}]}))
    (tmp_path / "b.json").write_text(json.dumps({**base, "runs": [{"variant": "COUPA", "seed": 2, **run}]}))
    r = coupa.main(["--merge", f"{tmp_path / 'a.json'},{tmp_path / 'b.json'},{tmp_path / 'missing.json'}",
                    "--out", str(tmp_path / "m.json")])
    assert [(x["variant"], x["seed"]) for x in r["runs"]] == [("COUPA", 1), ("COUPA", 2), ("PAL", 1)]
    assert r["variants"] == ["COUPA", "PAL"] and r["seeds"] == [1, 2]


def test_per_positive_auc_counts_ties_half():
    from bench.paired_diagnose import per_positive_auc

    got = per_positive_auc(np.array([0.5, 0.1]), np.array([0.4, 0.5, 0.6, 0.0, 0.1, 0.2]))
    assert got.tolist() == pytest.approx([(1 + 0.5 + 0) / 3, (1 + 0.5 + 0) / 3])


def test_paired_diagnose_pairs_by_seed_and_splits_positives(config_dir, tmp_path):
    from bench.paired_diagnose import main as diagnose
    from edgerec.train.config import load_experiment
    from edgerec.train.experiment import run_experiment

    for model in ("DIN", "DNN"):
        for seed in (1, 2):
            cfg = load_experiment(config_dir / "ctr.yaml", f"{model}_test", [
                f"output_dir={tmp_path / 'runs'}", f"ledger={tmp_path / 'l.jsonl'}", f"train.seed={seed}"])
            run_experiment(cfg, log=lambda *_: None)
    din, dnn = tmp_path / "runs" / "DIN_test", tmp_path / "runs" / "DNN_test"
    rep = diagnose(["--runs", f"DIN={din}", "--runs", f"DIN again={din}", "--runs", f"DNN={dnn}",
                    "--partition", "session", "--session-hours", "24", "--negatives", "5", "--bootstrap", "50",
                    "--out", str(tmp_path / "d.json")])
    assert rep["seeds"] == [1, 2] and rep["segments"] == ["in-session", "later"]
    same = rep["summary"]["gaps"]["DIN - DIN again"]
    assert rep["summary"]["pooled_auc_gaps"]["DIN - DIN again"]["mean"] == 0.0
    assert same["mean"] == 0.0 and all(r["gap DIN - DIN again"]["ci95"] == [0.0, 0.0] for r in rep["per_seed"])
    for r in rep["per_seed"]:
        assert 0.0 <= r["share"] <= 1.0 and 0.0 <= r["DNN"]["all"] <= 1.0
    assert json.loads((tmp_path / "d.json").read_text())["partition"] == "session"


def test_a_resumed_sweep_names_every_session_it_ran_in(tmp_path):
    from bench.docs_tables import render_sweep

    def run(value, auc, **when):
        return {"model": "DIN", "value": value, "best_epoch": 1, "epochs_run": 2,
                "valid": {"AUC": auc, "GAUC": auc, "logloss": 0.5}, **when}

    report = {"param": "train.lr", "started": "2026-11-25T10:00:00+00:00", "git": "bbbbbbb", "seed": 1, "L": 50,
              "chosen": {"DIN": 0.001}, "overrides": [],
              "runs": [run(0.003, 0.88, measured="2026-11-25", git="aaaaaaa"),
                       run(0.001, 0.90, measured="2026-11-28", git="bbbbbbb")]}
    doc = tmp_path / "results.md"
    render_sweep(report, "sweep", doc)
    text = doc.read_text()
    assert "Measured 2026-11-25, 2026-11-28, git aaaaaaa, bbbbbbb, seed 1" in text
    assert "| DIN | 0.001 | 1 / 2 | 0.9000 |" in text and text.count("✓") == 1


def test_nlu_merge_keeps_existing_rows_and_tables_variants_apart():
    from bench.nlu import markdown, merge_students
    from edgerec.compress.tasks import TASKS

    def row(method, seed, acc, variant=None):
        r = {"method": method, "seed": seed, "acc": dict.fromkeys(TASKS, acc), "bytes": 1_800_000,
             "latency": dict.fromkeys(TASKS, {"p50_ms": 1.0, "p99_ms": 2.0}),
             "edge_latency_32": {"encoder_only": {"p50_ms": 1.0, "p99_ms": 2.0}, "with_tokenizer": {"p50_ms": 1.1},
                                 "sentences": 10}}
        return {**r, "variant": variant} if variant else r  # older rows carry no variant

    report = {"baselines": {"sentiment": {"teacher fp32": {"acc": [0.8], "size_mb": 90.0, "p50_ms": 9.0,
                                                           "p99_ms": 9.0}}},
              "students": [row("cross", 1, 0.70)]}
    lr5 = {"distill": {"config": {"lr": 5e-4, "augment": 0}}}  # current rows: named by their settings
    other = {"students": [row("cross", 1, 0.10), row("cross", 1, 0.76, "cross+aug4"), row("cross", 2, 0.78, "cross+aug4"),
                          {**row("kd", 1, 0.5), **lr5}]}
    assert merge_students(report, other) == 3  # the plain cross seed 1 already there is kept, not replaced
    table = markdown(report)
    plain = next(line for line in table.splitlines() if "student cross (" in line)
    aug = next(line for line in table.splitlines() if "student cross+aug4 (" in line)
    assert "0.7000 (1 seed)" in plain and "0.7700 ± 0.0141" in aug and "96.2%" in aug
    assert "student kd lr 0.0005 (" in table


def test_nlu_headline_compares_every_method_at_one_setting():
    from bench.nlu import headline_variants

    def row(method, seed, valid, aug=0, shape=None):
        c = {"lr": 5e-4, "augment": aug}
        return {"method": method, "seed": seed, "general": {"x": 1}, "shape": shape,
                "distill": {"config": c, "valid_by_epoch": [{"a": valid - 0.01}, {"a": valid}]}}

    base = [row(m, s, 0.80) for m in ("kd", "cross", "tinybert") for s in (1, 2, 3)]
    aug = [row(m, s, 0.82, aug=2) for m in ("kd", "cross") for s in (1, 2, 3)]
    # the augmented setting has higher validation but lacks tinybert: every method stays on +gd
    assert sorted(headline_variants({"students": base + aug})) == [
        "cross+gd lr 0.0005", "kd+gd lr 0.0005", "tinybert+gd lr 0.0005"]
    tiny = [row("tinybert", s, 0.79, aug=2) for s in (1, 2)]
    assert "tinybert+gd+aug2 lr 0.0005" not in headline_variants({"students": base + aug + tiny})  # 2 seeds < 3
    tiny.append(row("tinybert", 3, 0.79, aug=2))
    assert sorted(headline_variants({"students": base + aug + tiny})) == [  # all 3 x 3: validation decides
        "cross+gd+aug2 lr 0.0005", "kd+gd+aug2 lr 0.0005", "tinybert+gd+aug2 lr 0.0005"]
    wide = [row(m, s, 0.95, shape={"hidden": 160}) for m in ("kd", "cross", "tinybert") for s in (1, 2, 3, 4)]
    assert "kd+h160+gd lr 0.0005" not in headline_variants({"students": base + wide})  # other widths never compete


def test_paired_bootstrap_of_two_models_on_the_same_sentences():
    from bench.nlu_significance import paired_bootstrap

    a = np.array([1, 1, 0, 1] * 50)
    same = paired_bootstrap(a, a)
    assert same["diff"] == 0 and same["ci95"] == [0, 0] and same["p_not_ahead"] == 1.0
    better = paired_bootstrap(np.ones(200), a)  # ahead on 50 of 200 sentences, never behind
    assert better["diff"] == 0.25 and 0 < better["ci95"][0] < 0.25 < better["ci95"][1] and better["p_not_ahead"] == 0
    noisy = paired_bootstrap(np.array([1, 0] * 100), np.array([0, 1] * 100))  # level on average
    assert noisy["ci95"][0] < 0 < noisy["ci95"][1] and 0.3 < noisy["p_not_ahead"] < 0.7


def test_integrity_tables_pair_models_by_seed(tmp_path, monkeypatch):
    """bench/integrity.py: new table, paired differences over the seeds both models have, old vs new."""
    import bench.integrity as integ

    def runs(model_aucs: dict[str, list[float]]) -> dict:
        return {"machine": {"cpu_count": 2, "processor": "x", "torch": "t", "torch_threads": 1}, "git": "abc",
                "started": "2026-12-01T00:00:00", "runs": [
                    {"model": m, "L": 50, "seed": s + 1, "test": {"AUC": a, "GAUC": a, "logloss": 0.5}}
                    for m, aucs in model_aucs.items() for s, a in enumerate(aucs)]}

    (tmp_path / "new.json").write_text(json.dumps(runs({"DIN": [0.60, 0.62], "COUPA": [0.65, 0.66, 0.70]})))
    (tmp_path / "old.json").write_text(json.dumps(runs({"DIN": [0.85, 0.86]})))
    monkeypatch.setattr(integ, "RESULTS", tmp_path)
    monkeypatch.setitem(integ.DATASETS, "toy", dict(title="toy", dataset="toy", repeats=False,
                                                    new=[("new.json", None)], old=["old.json"]))
    text = integ.render("toy")
    assert "| COUPA | 3 | 0.6700 ± 0.0265 |" in text  # all three seeds in its own row
    assert "| COUPA − DIN | 2 | +0.0450 ± 0.0071 | – | 2 / 2 |" in text  # only seeds 1 and 2 are paired
    assert "| DIN | 2 | 0.8550 ± 0.0071 | 0.6100 ± 0.0141 | -0.2450 ± 0.0071 |" in text


def test_the_hardening_table_has_no_bad_outcome(tmp_path):
    """bench/hardening.py over every category (schemathesis cut to 1 run of 10 examples per operation):
    a regression in any error path shows up here as a bad outcome, named."""
    import subprocess

    out = tmp_path / "hardening.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "hardening.py"), "--schemathesis-runs", "1",
                        "--examples", "10", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    bad = {c: v["bad"] for c, v in r["categories"].items() if v["bad"]}
    assert not bad, bad
    assert all(sum(v["counts"].values()) >= 20 for v in r["categories"].values())
    assert r["dead_letter_speed"]["negative ids"]["rc"] == 0


def test_truth_table_pairs_variants_with_coupa_by_seed(tmp_path, monkeypatch):
    """bench/integrity.py's o2o-sim truth block: each variant against COUPA over the seeds both have."""
    import bench.integrity as integ

    def report(aucs: dict[str, list[float]]) -> dict:
        truth = lambda a: {"relevance_auc": a, "request_ndcg@10": 0.98, "examination_spearman": None,  # noqa: E731
                           "examination_shape": None}
        return {"machine": {"cpu_count": 2}, "git": "abc", "variants": list(aucs), "runs": [
            {"variant": v, "seed": s + 1, "truth": truth(a), "test": {"AUC": a, "GAUC": a}}
            for v, xs in aucs.items() for s, a in enumerate(xs)]}

    monkeypatch.setattr(integ, "ROOT", tmp_path)
    monkeypatch.setattr(integ, "TRUTH_NEW", tmp_path / "new.json")
    monkeypatch.setattr(integ, "TRUTH_OLD", tmp_path / "old.json")
    assert integ.render_truth() is None  # nothing measured yet: no block
    (tmp_path / "new.json").write_text(json.dumps(report({"COUPA": [0.83, 0.82, 0.84], "PAL": [0.82, 0.80]})))
    (tmp_path / "old.json").write_text(json.dumps(report({"COUPA": [0.81, 0.80]})))
    text = integ.render_truth()
    assert "| PAL | 2 | -0.0150 ± 0.0071 | 0 / 2 |" in text
    assert "| COUPA | 2 | 0.8050 ± 0.0071 | 0.8250 ± 0.0071 | +0.0200 ± 0.0000 |" in text


def test_peer_ratios_compare_each_side_on_the_unit_both_count_the_same_way():
    """DIN on rows/s (a row per positive and per negative on both sides), SASRec on positives/s (RecBole's
    BPR row is a pair), means over seeds; RecBole's rows never count as edgerec's."""
    from bench.peer import ratios

    def row(fw, model, rows, pos, precision=None):
        r = {"framework": fw, "model": model, "rows_per_s": rows, "positives_per_s": pos}
        return r if precision is None else {**r, "precision": precision}

    rows = [row("RecBole 1.2.1", "DIN", 1000, 500), row("RecBole 1.2.1", "DIN", 1200, 600),
            row("edgerec", "DIN", 3300, 1650, "bf16"), row("edgerec", "DIN", 3300, 1650, "fp32"),
            row("RecBole 1.2.1", "SASRec", 900, 900), row("edgerec", "SASRec", 1000, 500, "fp32")]
    assert ratios(rows) == {"DIN bf16 / RecBole (rows_per_s)": 3.0, "DIN fp32 / RecBole (rows_per_s)": 3.0,
                            "SASRec fp32 / RecBole (positives_per_s)": 0.56}


def test_scale_bench_smoke_and_its_exponent_fit(tmp_path):
    from bench.scale import fit_exponent, main as scale_main

    assert fit_exponent([1e6, 2e6, 4e6], [10.0, 20.0, 40.0]) == 1.0  # linear
    assert fit_exponent([1e6, 2e6, 4e6], [10.0, 40.0, 160.0]) == 2.0  # quadratic would show
    rep = scale_main(["--sizes", "tiny", "--quick", "--cap", "60", "--out", str(tmp_path / "scale.json")])
    row = rep["rows"][0]
    assert set(row["train"]) == {"DIN/in_memory", "DIN/out_of_core", "COUPA/in_memory", "COUPA/out_of_core"}
    assert row["train"]["COUPA/out_of_core"]["shards"] and not row["train"]["COUPA/in_memory"]["shards"]
    assert rep["torchrun"]["processes"]["COUPA/2"]["processes"] == 2
    assert all(v["peak_anon_mb"] > 0 for v in row["train"].values())  # the sampler saw the training process
    assert rep["capped"]["item_cap"] == 60 and 0 < rep["capped"]["capped_sample_share"] < 1


def test_gpu_check_experiments_load():
    from bench.gpu_check import EXPERIMENTS
    from edgerec.train.config import load_experiment

    for expid, extra in EXPERIMENTS:  # the script only runs where a GPU is lent: its configs must not rot meanwhile
        cfg = load_experiment(ROOT / "configs" / "ctr.yaml", expid, ["dataset=o2o-sim:small", "train.device=cuda",
                                                                     *extra])
        assert cfg.model in ("DIN", "COUPA", "DiCycle")


def test_serve_before_after_compares_at_a_rate_every_run_kept_up_with():
    """The ratio is taken at the highest offered rate that every run sustained, never at a rate where
    one of them saturated (its CPU per request would include the queue's drain)."""
    from bench.serve_before_after import summarize

    def run(code, engine, cpu_by_rate, saturated_at=None, queued_at=None):
        load = [{"rate": r, "errors": 0, "achieved_qps": r * (0.5 if r == saturated_at else 1.0),
                 "latency_ms": {"p99": 4000.0 if r == queued_at else 8.0},
                 "cpu_ms_per_request": {"server": c}} for r, c in cpu_by_rate.items()]
        return {"code": code, "engine": engine, "load": load}

    runs = [run("before", "torch", {100: 4.0, 300: 4.2, 500: 9.0}, saturated_at=500),
            run("after", "onnx", {100: 3.0, 300: 2.0, 500: 2.1})]
    s = summarize(runs)
    assert s["rate"] == 300 and s["ratio"] == pytest.approx(2.0 / 4.2) and s["every_run_kept_up"]
    assert s["kept_up_to"] == {"before/torch": 300, "after/onnx": 500}
    one_engine = summarize([run("before", "torch", {100: 4.0}), run("after", "torch", {100: 3.0})])
    assert one_engine["new"] == "after/torch" and one_engine["ratio"] == pytest.approx(0.75)
    # all of the rate answered, but the queue grew through the run (p99 4 s): not kept up with
    queued = summarize([run("before", "torch", {100: 4.0, 300: 4.2}), run("after", "onnx", {100: 3.0, 300: 2.0},
                                                                         queued_at=300)])
    assert queued["rate"] == 100 and queued["kept_up_to"] == {"before/torch": 300, "after/onnx": 100}
    # a ramp that ran on past its first failure (an older tree's rule): the later pass does not count
    resumed = summarize([run("before", "onnx", {100: 4.0, 300: 4.1, 500: 4.3}, queued_at=300),
                         run("after", "onnx", {100: 3.0, 300: 2.0, 500: 2.1})])
    assert resumed["kept_up_to"]["before/onnx"] == 100 and resumed["rate"] == 100
    none_kept = summarize([run("before", "torch", {100: 4.0}, saturated_at=100), run("after", "onnx", {100: 3.0})])
    assert not none_kept["every_run_kept_up"]
