"""Your own data, measured: the example log through import -> train -> serve, and which model to start with.

    python bench/your_data.py                          # 4 experiments x seeds 1-3 (~40 min on one core)
    python bench/your_data.py --seeds 1 --quick        # smoke: the tiny log, COUPA_mine_test only

The log is `edgerec data example` (800 users, 320 items, 30 days, string ids, ms times, UTC+8; the
simulator underneath, seed 11, which no other benchmark uses), imported with the flags a user types
(edgerec.data.example.IMPORT_ARGS). Experiments: configs/your_data.yaml (DIN_mine, DiCycle_mine,
COUPA_mine with the bucketed `scroll_depth` user attribute, COUPA_mine_nouser without it), each
for every seed, with:
  logged     test AUC / GAUC on the logged clicks (what the user can measure on his own log)
  truth      the simulator's ground truth, which a real log does not have (edgerec.train.truth):
             relevance AUC of the served (position-free) score, request NDCG@10, and for COUPA the
             examination curve of each user segment against the true one (MAE of θ(p)/θ(1))
Paired differences are by seed. Round trip: import, a COUPA_mine_test run and one /recommend with a
string id, timed end to end. Writes bench/results/your_data.json and the tables in docs/results.md
(<!-- your_data --> and <!-- your_data_roundtrip -->).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

EXPERIMENTS = ("DIN_mine", "DiCycle_mine", "COUPA_mine", "COUPA_mine_nouser")


def _cli(*args: str, env: dict) -> float:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "edgerec.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode:
        raise SystemExit(f"edgerec {' '.join(args)} failed: {p.stderr[-3000:]}")
    return time.perf_counter() - t


class TruthView:
    """The imported dataset with the simulator's truth attached, its user ids mapped like the import's."""

    def __init__(self, ds, sim):
        from edgerec.data.imports import IdMap

        users = IdMap.from_table(ds.extras["id_map_user"])
        t = sim.user_truth
        idx = users.encode_array(pa.array([f"u{u:05d}" for u in t.column("user_id").to_pylist()]))
        self.name, self.events = ds.name, ds.events
        self.extras = {"truth_exposures": sim.exposure_truth, "truth_users": t.set_column(0, "user_id", idx)}


def _ms(v: list[float], d: int = 4) -> str:
    v = [x for x in v if x is not None]
    if not v:
        return "–"
    return f"{np.mean(v):.{d}f} ± {np.std(v, ddof=1):.{d}f}" if len(v) > 1 else f"{v[0]:.{d}f} (1 seed)"


def markdown(r: dict) -> str:
    by = {}
    for x in r["runs"]:
        by.setdefault(x["expid"], []).append(x)
    rows = ["| experiment | seeds | logged test AUC | logged test GAUC | truth relevance AUC | truth NDCG@10 | "
            "exam. curve MAE deep / medium / shallow | epochs | train s |", "|---|---|---|---|---|---|---|---|---|"]
    for e in [e for e in EXPERIMENTS + ("COUPA_mine_test",) if e in by]:
        xs = by[e]
        mae = "–"
        if "examination_shape" in xs[0]["truth"]:
            segs = ("deep", "medium", "shallow")
            mae = " / ".join(_ms([x["truth"]["examination_shape"][s]["mae"] for x in xs], 3) for s in segs)
        rows.append(f"| {e} | {','.join(str(x['seed']) for x in xs)} | {_ms([x['test']['AUC'] for x in xs])} | "
                    f"{_ms([x['test'].get('GAUC') for x in xs])} | {_ms([x['truth']['relevance_auc'] for x in xs])} | "
                    f"{_ms([x['truth']['request_ndcg@10'] for x in xs])} | {mae} | "
                    f"{np.mean([x['epochs_run'] for x in xs]):.1f} | {np.mean([x['train_seconds'] for x in xs]):.0f} |")
    pairs = []
    for a, b, what in (("COUPA_mine", "DIN_mine", "COUPA - DIN"), ("COUPA_mine", "DiCycle_mine", "COUPA - DiCycle"),
                       ("DiCycle_mine", "DIN_mine", "DiCycle - DIN"),
                       ("COUPA_mine", "COUPA_mine_nouser", "user feature: COUPA - COUPA without it")):
        if a in by and b in by:
            sa, sb = {x["seed"]: x for x in by[a]}, {x["seed"]: x for x in by[b]}
            common = sorted(set(sa) & set(sb))
            d_log = [sa[s]["test"]["AUC"] - sb[s]["test"]["AUC"] for s in common]
            d_rel = [sa[s]["truth"]["relevance_auc"] - sb[s]["truth"]["relevance_auc"] for s in common]
            pairs.append(f"| {what} | {len(common)} | {_ms(d_log)} | {_ms(d_rel)} |")
    if pairs:
        rows += ["", "Paired by seed (difference of means ± std of the per-seed differences):", "",
                 "| comparison | seeds | logged test AUC | truth relevance AUC |", "|---|---|---|---|", *pairs]
    return "\n".join(rows)


ROUNDTRIP_STEPS = ("write the example log", "edgerec data import", "edgerec train COUPA_mine_test",
                   "start the service + first /recommend", "total")


def roundtrip_markdown(rt: dict) -> str:
    return ("| step | seconds |\n|---|---|\n" + "\n".join(f"| {k} | {rt[k]:.1f} |" for k in ROUNDTRIP_STEPS if k in rt))


def main(argv=None) -> dict:
    from bench.docs_tables import replace_block
    from edgerec.data import registry
    from edgerec.data.example import IMPORT_ARGS, example_simulation, write_example_log
    from edgerec.io import write_json_atomic
    from edgerec.train.config import load_experiment
    from edgerec.train.experiment import run_experiment
    from edgerec.train.ledger import git_commit, machine_info
    from edgerec.train.truth import evaluate_against_truth

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--experiments", default=",".join(EXPERIMENTS))
    ap.add_argument("--out", help="result JSON (default bench/results/your_data.json)")
    ap.add_argument("--resume", action="store_true", help="keep the runs already in --out")
    ap.add_argument("--quick", action="store_true", help="smoke: tiny log, COUPA_mine_test, no docs")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    exps = ["COUPA_mine_test"] if a.quick else [e for e in a.experiments.split(",") if e]
    size = "tiny" if a.quick else "example"
    out = Path(a.out) if a.out else (ROOT / "runs" / "bench" / "your_data_quick.json" if a.quick
                                     else ROOT / "bench" / "results" / "your_data.json")
    report = {"benchmark": "your_data", "git": git_commit(), "machine": machine_info(a.threads),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "log": f"edgerec data example --size {size}",
              "seeds": seeds, "runs": [], "roundtrip_seconds": {}}
    if a.resume and out.exists():
        old = json.loads(out.read_text())
        report["runs"], report["roundtrip_seconds"] = old["runs"], old.get("roundtrip_seconds", {})
    done = {(r["expid"], r["seed"]) for r in report["runs"]}
    tmp = Path(tempfile.mkdtemp(prefix="edgerec-yourdata-"))
    os.environ["EDGEREC_DATA_DIR"] = str(tmp / "data")
    env = {**os.environ, "EDGEREC_THREADS": str(a.threads)}
    rt = {}
    t0 = time.perf_counter()
    paths = write_example_log(tmp / "log", size=size)
    rt["write the example log"] = time.perf_counter() - t0
    rt["edgerec data import"] = _cli("data", "import", "myfeed", "--events", str(paths["events"]), "--items",
                                     str(paths["items"]), *IMPORT_ARGS, env=env)
    cfg_path = ROOT / "configs" / "your_data.yaml"
    common = [f"output_dir={tmp / 'runs'}", f"ledger={tmp / 'ledger.jsonl'}", "train.progress=false",
              f"train.threads={a.threads}"]
    rt["edgerec train COUPA_mine_test"] = _cli("train", "--config", str(cfg_path), "--expid", "COUPA_mine_test",
                                               *sum((["--set", c] for c in common), []), env=env)
    run = next((tmp / "runs" / "COUPA_mine_test").iterdir())
    t = time.perf_counter()
    from fastapi.testclient import TestClient

    from edgerec.serve.app import create_app
    from edgerec.serve.server import ServiceRecipe, build_service

    client = TestClient(create_app(build_service(ServiceRecipe(store="memory", run=str(run)))))
    reply = client.post("/recommend", json={"user_id": "u00007", "k": 10})
    assert reply.status_code == 200, reply.text
    rt["start the service + first /recommend"] = time.perf_counter() - t
    rt["total"] = sum(rt.values())
    report["roundtrip_seconds"] = {k: round(v, 2) for k, v in rt.items()}
    print(report["roundtrip_seconds"], flush=True)

    ds = registry.load("myfeed")
    truth_view = TruthView(ds, example_simulation(size))
    cache: dict = {}
    for seed in seeds:  # seed-major: a cut-short run has every experiment at the first seeds
        for e in exps:
            if (e, seed) in done:
                continue
            cfg = load_experiment(cfg_path, e, [*common, f"train.seed={seed}"])
            r = run_experiment(cfg, sample_cache=cache, log=lambda *_: None)
            truth = evaluate_against_truth(r.trained, r.sample_set, truth_view)
            report["runs"].append({"expid": e, "seed": seed, "best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
                                   "train_seconds": r.train_seconds, "valid": r.valid, "test": r.test,
                                   "truth": truth})
            print(e, seed, r.test, {k: v for k, v in truth.items() if k != "samples"}, flush=True)
            write_json_atomic(out, report)
    write_json_atomic(out, report)
    table = markdown(report)
    print(table)
    if not a.quick:
        replace_block("your_data", table + f"\n\nRaw runs: bench/results/your_data.json; git {report['git']}; "
                      f"{a.threads} torch thread(s); mean ± sample std over seeds.")
        replace_block("your_data_roundtrip", roundtrip_markdown(report["roundtrip_seconds"]))
    return report


if __name__ == "__main__":
    main()
