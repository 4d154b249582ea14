"""Hyper-parameter choice on the VALIDATION split only (learning rate by default, or any config key).

    python bench/tune_lr.py                                   # LR, DNN, DIN x lr grid, seed 100, L=50
    python bench/tune_lr.py --models GRU4Rec,SASRec --out bench/results/lr_sweep_ml100k_seq.json
    python bench/tune_lr.py --models DiCycle --param model_args.gate_threshold --values 0,0.2,0.4 \
        --out bench/results/delta_sweep_ml100k.json

One seed (100, not one of the benchmark seeds 1-3) and up to --epochs epochs with early stopping on
validation; the value with the best validation AUC is what configs/ctr.yaml uses. The test split is
evaluated by the runner but never read here. Writes the sweep JSON after every run and its table in
docs/results.md (block named after the output file).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.docs_tables import render_sweep  # noqa: E402
from edgerec.io import write_json_atomic  # noqa: E402
from edgerec.train.config import load_experiment  # noqa: E402
from edgerec.train.experiment import run_experiment  # noqa: E402
from edgerec.train.ledger import git_commit, machine_info  # noqa: E402

LR_GRID = {"LR": [1e-3, 1e-2, 3e-2], "DNN": [1e-3, 3e-3, 1e-2], "DIN": [1e-3, 3e-3, 1e-2]}
DEFAULT_LR_GRID = [1e-3, 3e-3]  # sequential baselines and DiCycle (2 values: CPU budget, docs/results.md)


def _value(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="LR,DNN,DIN")
    p.add_argument("--suffix", default="ml100k", help="experiment ids are <MODEL>_<suffix> in configs/ctr.yaml")
    p.add_argument("--param", default="train.lr", help="config key to sweep")
    p.add_argument("--values", help="comma-separated grid (default: the lr grid per model)")
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fixed overrides")
    p.add_argument("--resume", action="store_true",
                   help="keep the runs already in --out, run only the missing (model, value) pairs")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "lr_sweep_ml100k.json"))
    a = p.parse_args(argv)
    report = {"benchmark": "sweep", "suffix": a.suffix, "param": a.param, "split_used": "valid", "seed": a.seed,
              "max_epochs": a.epochs, "L": 50, "overrides": a.set, "git": git_commit(), "machine": machine_info(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "runs": [], "chosen": {}}
    if a.resume and Path(a.out).exists():
        import json

        old = json.loads(Path(a.out).read_text())
        if old.get("param", "train.lr") != a.param:
            raise SystemExit(f"{a.out} sweeps {old.get('param')}, not {a.param}; use another --out")
        report.update(runs=old["runs"], chosen=old["chosen"], started=old["started"])
    done = {(r["model"], r.get("value", r.get("lr"))) for r in report["runs"]}
    cache: dict = {}
    for model in a.models.split(","):
        grid = [_value(v) for v in a.values.split(",")] if a.values else LR_GRID.get(model, DEFAULT_LR_GRID)
        for value in grid:
            if (model, value) in done:
                continue
            cfg = load_experiment(ROOT / "configs" / "ctr.yaml", f"{model}_{a.suffix}", [
                *a.set, f"{a.param}={value}", f"train.epochs={a.epochs}", f"train.seed={a.seed}",
                "train.progress=false", f"output_dir={ROOT / 'runs' / 'tune'}",
                f"ledger={ROOT / 'runs' / 'tune' / 'ledger.jsonl'}"])
            r = run_experiment(cfg, sample_cache=cache, log=lambda *_: None)
            row = {"model": model, "value": value, "best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
                   "valid": r.valid, "train_seconds": r.train_seconds,  # when and where: a resumed sweep spans sessions
                   "measured": datetime.now(timezone.utc).date().isoformat(), "git": report["git"]}
            if a.param == "train.lr":
                row["lr"] = value
            print(row, flush=True)
            report["runs"].append(row)
            write_json_atomic(a.out, report)
        best = max((r for r in report["runs"] if r["model"] == model), key=lambda r: r["valid"]["AUC"])
        report["chosen"][model] = best.get("value", best.get("lr"))
        write_json_atomic(a.out, report)
    render_sweep(report, Path(a.out).stem)
    return report


if __name__ == "__main__":
    main()
