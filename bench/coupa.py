"""COUPA against position baselines on o2o-sim, scored against the simulator's TRUTH (issue 4).

    python bench/coupa.py                         # 5 variants x seeds 1-3 on o2o-sim (impression protocol)
    python bench/coupa.py --quick                 # smoke run on o2o-sim:tiny, 1 seed, 1 epoch

Variants (all the same COUPA file, configs/ctr.yaml COUPA_<suffix>, switched by overrides):
  COUPA                personalized position selector + point process
  PAL                  one global examination curve
  position-as-feature  position embedding in the tower; position 1 at serving
  no position          positions ignored
  COUPA w/o TPP        the point process replaced by DIN attention without time

For each run: logged-click metrics on the test split (AUC, GAUC, logloss of the SERVED score, which
never sees the position) and the truth metrics of edgerec/train/truth.py (relevance AUC, NDCG@10
of each test request re-ranked without positions, Spearman of the learned vs true examination
curves per user segment). The epoch is chosen on validation. Writes bench/results/coupa_<dataset>.json
after every run (--resume skips finished runs) and its table in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.docs_tables import replace_block  # noqa: E402
from edgerec.data import registry  # noqa: E402
from edgerec.io import write_json_atomic  # noqa: E402
from edgerec.train.config import load_experiment  # noqa: E402
from edgerec.train.experiment import run_experiment  # noqa: E402
from edgerec.train.ledger import git_commit, machine_info  # noqa: E402
from edgerec.train.truth import evaluate_against_truth  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "COUPA": [],
    "PAL": ["model_args.position_mode=pal"],
    "position-as-feature": ["model_args.position_mode=feature"],
    "no position": ["model_args.position_mode=none"],
    "COUPA w/o TPP": ["model_args.use_point_process=false"],
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="o2o-sim")
    p.add_argument("--suffix", default="o2o", help="experiment id COUPA_<suffix> in configs/ctr.yaml")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--merge", metavar="A.json,B.json", help="no training: combine the runs of result files written "
                   "by parallel queues (--out) into --out / the default file and its docs table")
    a = p.parse_args(argv)
    variants = a.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    seeds = [int(s) for s in a.seeds.split(",")]
    overrides = list(a.set)
    if a.quick:
        a.dataset, a.suffix, seeds = "o2o-sim:tiny", "test", [1]
        overrides += ["train.epochs=1"]
    name = a.dataset.replace("-", "").replace(":", "_")
    out = Path(a.out) if a.out else (ROOT / "runs" / "bench" / "coupa_quick.json" if a.quick
                                     else ROOT / "bench" / "results" / f"coupa_{name}.json")
    if a.merge:
        return merge([Path(f) for f in a.merge.split(",")], out, name)
    report = {"benchmark": "coupa", "dataset": a.dataset, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "git": git_commit(), "machine": machine_info(), "seeds": seeds, "variants": variants,
              "overrides": overrides, "runs": []}
    if a.resume and out.exists():
        report["runs"] = json.loads(out.read_text())["runs"]
    done = {(r["variant"], r["seed"]) for r in report["runs"]}
    ds = registry.load(a.dataset)
    cache: dict = {}
    t0 = time.time()
    for variant in variants:
        for seed in seeds:
            if (variant, seed) in done:
                continue
            cfg = load_experiment(ROOT / "configs" / "ctr.yaml", f"COUPA_{a.suffix}", [
                *overrides, *VARIANTS[variant], f"train.seed={seed}", "train.progress=false",
                f"output_dir={ROOT / 'runs' / 'bench'}", f"ledger={ROOT / 'results' / 'ledger.jsonl'}"])
            r = run_experiment(cfg, sample_cache=cache)
            truth = evaluate_against_truth(r.trained, r.sample_set, ds)
            report["runs"].append({"variant": variant, "seed": seed, "best_epoch": r.best_epoch,
                                   "epochs_run": r.epochs_run, "train_seconds": r.train_seconds,
                                   "valid": r.valid, "test": r.test, "truth": truth, "run_dir": r.run_dir})
            print(variant, seed, {k: v for k, v in truth.items() if k != "samples"}, flush=True)
            write_json_atomic(out, report)
    report["wall_seconds"] = round(time.time() - t0, 1)
    write_json_atomic(out, report)
    table = markdown(report)
    print(table)
    if not a.quick:
        replace_block(f"coupa_{name}", table + f"\n\nRaw runs: bench/results/coupa_{name}.json; git {report['git']}; "
                      f"mean ± sample std over seeds {seeds}.")
    return report


def merge(files: list[Path], out: Path, name: str) -> dict:
    """Union of the runs of several result files (missing files skipped), variants in VARIANTS order."""
    reports = [json.loads(f.read_text()) for f in files if f.exists()]
    if not reports:
        raise SystemExit(f"none of {[str(f) for f in files]} exists")
    runs = {(r["variant"], r["seed"]): r for rep in reports for r in rep["runs"]}
    report = {**reports[0], "runs": sorted(runs.values(), key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"])),
              "merged_from": [str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else str(f) for f in files if f.exists()],
              "seeds": sorted({r["seed"] for r in runs.values()}),
              "variants": [v for v in VARIANTS if any(r["variant"] == v for r in runs.values())]}
    write_json_atomic(out, report)
    table = markdown(report)
    print(table)
    replace_block(f"coupa_{name}", table + f"\n\nRaw runs: bench/results/{out.name} (merged from "
                  f"{', '.join(report['merged_from'])}); git {report['git']}; mean ± sample std over the seeds in "
                  "the seeds column.")
    return report


def _ms(vals: list[float]) -> str:
    v = np.asarray(vals, dtype=np.float64)
    return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}"


def markdown(report: dict) -> str:
    rows = ["| variant | seeds | relevance AUC (truth) | NDCG@10 (truth, no positions) | exam. Spearman deep / medium / shallow "
            "| exam. curve MAE deep / medium / shallow | logged test AUC | logged GAUC |", "|---|---|---|---|---|---|---|---|"]
    for variant in report["variants"]:
        runs = [r for r in report["runs"] if r["variant"] == variant]
        if not runs:
            continue
        sp = [r["truth"].get("examination_spearman") for r in runs]
        sp_txt = " / ".join(_ms([s[k] for s in sp]) for k in ("deep", "medium", "shallow")) if all(sp) else "n/a"
        ndcg_key = next(k for k in runs[0]["truth"] if k.startswith("request_ndcg"))
        sh = [r["truth"].get("examination_shape") for r in runs]
        sh_txt = " / ".join(f"{np.mean([x[k]['mae'] for x in sh]):.3f}" for k in ("deep", "medium", "shallow")) \
            if all(sh) else "n/a"
        rows.append(f"| {variant} | {len(runs)} | {_ms([r['truth']['relevance_auc'] for r in runs])} | "
                    f"{_ms([r['truth'][ndcg_key] for r in runs])} | {sp_txt} | {sh_txt} | "
                    f"{_ms([r['test']['AUC'] for r in runs])} | {_ms([r['test']['GAUC'] for r in runs])} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
