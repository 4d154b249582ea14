"""GPU check: one epoch of DIN, DiCycle and COUPA on CUDA and on CPU, metrics side by side.

    python bench/gpu_check.py                   # o2o-sim:small, ~3 min on a GPU machine
    python bench/gpu_check.py --dataset o2o-sim:tiny --quick

Run it when a GPU is lent (edgerec's tests never need one). Each model trains for one epoch from
the same seed and initial weights on `cuda` and on `cpu`, and both are evaluated on validation
and test (evaluation always runs on the model's device, results are saved on CPU). On CUDA a few
kernels (embedding backward, index_add) are not deterministic, so the metrics agree closely, not
bit for bit: the check passes when |valid AUC(cuda) - valid AUC(cpu)| <= --tol (default 0.005)
for every model. Also reported: seconds per epoch and samples/s on each device.
Writes bench/results/gpu_check.json; exits 1 if a model is outside the tolerance, 2 without CUDA.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (expid, overrides): DIN and COUPA on the impression protocol; DiCycle on the simulator's clicks
EXPERIMENTS = [("DIN_scale", []), ("COUPA_scale", []), ("DiCycle_o2osim", ["data.max_len=20"])]


def main(argv=None) -> int:
    import tempfile

    import torch

    from edgerec.train.config import load_experiment
    from edgerec.train.experiment import run_experiment
    from edgerec.train.ledger import git_commit, machine_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="o2o-sim:small")
    p.add_argument("--tol", type=float, default=0.005, help="largest |valid AUC difference| that passes")
    p.add_argument("--quick", action="store_true", help="20 steps per epoch")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_check.json"))
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; run it on a machine with a GPU.", file=sys.stderr)
        return 2
    rows, cache, failed = [], {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for expid, extra in EXPERIMENTS:
            row = {"expid": expid}
            for device in ("cuda", "cpu"):
                cfg = load_experiment(ROOT / "configs" / "ctr.yaml", expid, [
                    f"dataset={a.dataset}", "train.epochs=1", f"train.device={device}", "train.progress=false",
                    f"output_dir={tmp}", f"ledger={tmp}/ledger.jsonl", *extra,
                    *(["train.max_steps_per_epoch=20"] if a.quick else [])])
                r = run_experiment(cfg, log=lambda *x, **k: None, sample_cache=cache)
                ledger = json.loads(Path(f"{tmp}/ledger.jsonl").read_text().splitlines()[-1])
                row[device] = {"valid": r.valid, "test": r.test, "epoch_seconds": r.train_seconds,
                               "samples_per_second": ledger["train_samples_per_second"]}
            row["valid_AUC_diff"] = round(abs(row["cuda"]["valid"]["AUC"] - row["cpu"]["valid"]["AUC"]), 5)
            row["ok"] = row["valid_AUC_diff"] <= a.tol
            if not row["ok"]:
                failed.append(expid)
            rows.append(row)
            print(f"{expid}: valid AUC cuda {row['cuda']['valid']['AUC']:.4f}  cpu {row['cpu']['valid']['AUC']:.4f}  "
                  f"|diff| {row['valid_AUC_diff']:.4f}  epoch s cuda {row['cuda']['epoch_seconds']:.1f}  "
                  f"cpu {row['cpu']['epoch_seconds']:.1f}", flush=True)
    report = {"benchmark": "gpu_check", "git": git_commit(), "machine": machine_info(),
              "gpu": torch.cuda.get_device_name(0), "dataset": a.dataset, "tol": a.tol, "quick": a.quick, "rows": rows}
    Path(a.out).write_text(json.dumps(report, indent=1))
    print("gpu_check:", "PASS" if not failed else f"FAIL ({', '.join(failed)} beyond |diff| {a.tol})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
