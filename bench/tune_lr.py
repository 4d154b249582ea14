"""Learning-rate choice for the ml-100k baselines, on the VALIDATION split only.

    python bench/tune_lr.py                  # LR, DNN, DIN x lr grid, seed 100, L=50

One seed (100, not one of the benchmark seeds 1-3) and up to 12 epochs with early stopping; the lr
with the best validation AUC is what configs/ctr.yaml uses. Writes bench/results/lr_sweep_ml100k.json.
The test split is evaluated by the runner but not read here.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.docs_tables import render_lr_sweep  # noqa: E402
from edgerec.io import write_json_atomic  # noqa: E402
from edgerec.train.config import load_experiment  # noqa: E402
from edgerec.train.experiment import run_experiment  # noqa: E402
from edgerec.train.ledger import git_commit, machine_info  # noqa: E402

GRID = {"LR": [1e-3, 1e-2, 3e-2], "DNN": [1e-3, 3e-3, 1e-2], "DIN": [1e-3, 3e-3, 1e-2]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="LR,DNN,DIN")
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "lr_sweep_ml100k.json"))
    a = p.parse_args(argv)
    report = {"benchmark": "lr_sweep", "dataset": "ml-100k", "split_used": "valid", "seed": a.seed,
              "max_epochs": a.epochs, "L": 50, "git": git_commit(), "machine": machine_info(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "runs": [], "chosen": {}}
    cache: dict = {}
    for model in a.models.split(","):
        for lr in GRID[model]:
            cfg = load_experiment(ROOT / "configs" / "ctr.yaml", f"{model}_ml100k", [
                f"train.lr={lr}", f"train.epochs={a.epochs}", f"train.seed={a.seed}", "train.progress=false",
                f"output_dir={ROOT / 'runs' / 'tune'}", f"ledger={ROOT / 'runs' / 'tune' / 'ledger.jsonl'}"])
            r = run_experiment(cfg, sample_cache=cache, log=lambda *_: None)
            row = {"model": model, "lr": lr, "best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
                   "valid": r.valid, "train_seconds": r.train_seconds}
            print(row, flush=True)
            report["runs"].append(row)
            write_json_atomic(a.out, report)
        best = max((r for r in report["runs"] if r["model"] == model), key=lambda r: r["valid"]["AUC"])
        report["chosen"][model] = best["lr"]
    write_json_atomic(a.out, report)
    render_lr_sweep(report)
    return report


if __name__ == "__main__":
    main()
