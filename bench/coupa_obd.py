"""COUPA and its position baselines on Open Bandit (real logs with randomized positions; issue 4).

    python bench/coupa_obd.py                 # 4 position modes x seeds 1-3
    python bench/coupa_obd.py --quick         # 1 seed, 1 epoch, 300 IPS rounds

Trains on all logs (impression protocol, split by time), then on the `random` policy's TEST rounds:
  * learned examination curve θ(p)/θ(1) (mean over rounds) against the empirical CTR(p)/CTR(1)
    of the random policy's logs, with 95% bootstrap intervals;
  * V_IPS of our ranking policy (top 3 of the campaign's items by the served score) against the
    random policy's own value, with 95% bootstrap intervals (edgerec/train/offpolicy.py).
Writes bench/results/coupa_obd.json and its table in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.docs_tables import replace_block  # noqa: E402
from edgerec.data import registry  # noqa: E402
from edgerec.io import write_json_atomic  # noqa: E402
from edgerec.train.config import load_experiment  # noqa: E402
from edgerec.train.experiment import run_experiment  # noqa: E402
from edgerec.train.ledger import git_commit, machine_info  # noqa: E402
from edgerec.train.offpolicy import ips_value, position_ctr_curve, ranking_slates  # noqa: E402

MODES = ("personalized", "pal", "feature", "none")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--ips-rounds", type=int, default=0, help="cap on random-policy test rounds (0 = all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "coupa_obd.json"))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    overrides = list(a.set)
    if a.quick:
        seeds, a.ips_rounds, overrides = [1], 300, overrides + ["train.epochs=1"]
        a.out = str(ROOT / "runs" / "bench" / "coupa_obd_quick.json")
    ds = registry.load("obd")
    ev = ds.events
    policy = np.asarray(ev.column("policy").to_pylist())
    campaign_all = np.asarray(ev.column("campaign").to_pylist())
    pos_all = ev.column("position").to_numpy().astype(np.int64)
    click_all = ev.column("label").to_numpy().astype(np.float64)
    rnd = policy == "random"
    report = {"benchmark": "coupa_obd", "dataset": "obd", "git": git_commit(), "machine": machine_info(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seeds": seeds,
              "overrides": overrides, "empirical": position_ctr_curve(pos_all[rnd], click_all[rnd]), "runs": []}
    out = Path(a.out)
    if a.resume and out.exists():
        report["runs"] = json.loads(out.read_text())["runs"]
    done = {(r["mode"], r["seed"]) for r in report["runs"]}
    for mode in a.modes.split(","):
        for seed in seeds:
            if (mode, seed) in done:
                continue
            cfg = load_experiment(ROOT / "configs" / "ctr.yaml", "COUPA_obd", [
                *overrides, f"model_args.position_mode={mode}", f"train.seed={seed}", "train.progress=false",
                f"output_dir={ROOT / 'runs' / 'bench'}", f"ledger={ROOT / 'results' / 'ledger.jsonl'}"])
            r = run_experiment(cfg)
            model, s = r.trained, r.sample_set
            sp = s.splits["test"]
            rows = np.flatnonzero(rnd[sp.event_row])
            if a.ips_rounds:
                rows = rows[:a.ips_rounds]
            camp = campaign_all[sp.event_row[rows]]
            item_index = np.searchsorted(s.item_ids, ev.column("item_id").to_numpy()) + 1
            candidates = {c: np.unique(item_index[campaign_all == c]) for c in np.unique(camp)}
            slates = ranking_slates(model, s, sp, rows, candidates, camp)
            pscore = ev.column("propensity").to_numpy()[sp.event_row[rows]]
            ips = ips_value(slates, sp.item[rows], sp.position[rows], sp.label[rows].astype(np.float64), pscore)
            run = {"mode": mode, "seed": seed, "test": r.test, "valid": r.valid, "best_epoch": r.best_epoch,
                   "ips": ips, "run_dir": r.run_dir}
            if model.examination is not None:
                b = s.make_batch(sp, rows)
                theta = model.examination_curves(b).mean(0).numpy()
                run["learned_ratio"] = (theta / theta[0]).tolist()
            report["runs"].append(run)
            print(mode, seed, ips, run.get("learned_ratio"), flush=True)
            write_json_atomic(out, report)
    write_json_atomic(out, report)
    table = markdown(report)
    print(table)
    if not a.quick:
        replace_block("coupa_obd", table + f"\n\nRaw runs: bench/results/coupa_obd.json; git {report['git']}.")
    return report


def markdown(report: dict) -> str:
    e = report["empirical"]
    lines = ["Empirical CTR(p)/CTR(1) on the random policy's logs (95% bootstrap CI): " + ", ".join(
        f"p{p}: {r:.3f} [{lo:.3f}, {hi:.3f}]" for p, r, lo, hi in zip(e["positions"], e["ratio"], e["ratio_lo"], e["ratio_hi"])),
        "", "| position mode | seeds | learned θ(p)/θ(1) | V_IPS of our ranking | random policy value | logged test AUC |",
        "|---|---|---|---|---|---|"]
    for mode in MODES:
        runs = [r for r in report["runs"] if r["mode"] == mode]
        if not runs:
            continue
        ratio = (" / ".join(f"{v:.3f}" for v in np.mean([r["learned_ratio"] for r in runs], 0))
                 if "learned_ratio" in runs[0] else "n/a")
        ips = np.array([r["ips"]["ips"] for r in runs])
        auc = np.array([r["test"]["AUC"] for r in runs])
        sd = (lambda x: x.std(ddof=1) if len(x) > 1 else 0.0)  # noqa: E731
        lines.append(f"| {mode} | {len(runs)} | {ratio} | {ips.mean():.4f} ± {sd(ips):.4f} | "
                     f"{runs[0]['ips']['logged']:.4f} | {auc.mean():.4f} ± {sd(auc):.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
