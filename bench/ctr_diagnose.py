"""Why does DIN beat DNN by so little on ml-100k? Evidence from the ctr benchmark's checkpoints.

    python bench/ctr_diagnose.py [--lens 50,200] [--seeds 1,2,3]

Uses the checkpoints that bench/ctr.py trained (found through results/ledger.jsonl), no retraining:
  1. Paired bootstrap over test users of AUC(DIN) - AUC(DNN) and AUC(DNN) - AUC(LR), per seed
     (2,000 resamples of users; each user brings its positive and its negative).
  2. The same checkpoints on a test set whose negatives are drawn by item popularity
     (data.eval_negatives=popularity): the "popular vs random item" shortcut disappears, so what is
     left is how well a model matches the target item to the user's history.
Writes bench/results/ctr_ml100k_diagnose.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgerec.io import write_json_atomic  # noqa: E402
from edgerec.models import MODELS  # noqa: E402
from edgerec.train.experiment import build_samples  # noqa: E402
from edgerec.train.ledger import git_commit, machine_info, read_ledger  # noqa: E402
from edgerec.train.metrics import auc  # noqa: E402
from edgerec.train.report import mean_std  # noqa: E402
from edgerec.train.trainer import load_state, predict  # noqa: E402
from edgerec.train.config import experiment_from_dict  # noqa: E402

MODELS_ = ("LR", "DNN", "DIN")


def find_run(ledger: list[dict], model: str, L: int, seed: int) -> dict:
    hits = [r for r in ledger if r["model"] == model and r["seed"] == seed and r["expid"] == f"{model}_ml100k"
            and r["config"]["data"]["max_len"] == L and "/bench/" in r["run_dir"]]
    if not hits:
        raise SystemExit(f"no bench run for {model} L={L} seed={seed} in the ledger; run bench/ctr.py first")
    return hits[-1]


def paired_bootstrap(y, p_a, p_b, user, n_boot=2000, seed=0) -> dict:
    users = np.unique(user)
    rng = np.random.default_rng(seed)
    rows_of = {u: np.flatnonzero(user == u) for u in users}
    diffs = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([rows_of[u] for u in rng.choice(users, len(users))])
        diffs[b] = auc(y[idx], p_a[idx]) - auc(y[idx], p_b[idx])
    return {"diff": float(auc(y, p_a) - auc(y, p_b)), "ci95": [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))],
            "p_le_0": float((diffs <= 0).mean())}


def recency_analysis(buckets=((1, 10), (11, 50), (51, 100), (101, 200))) -> dict:
    """How related is each user's test item to history slots at different recencies?

    For every test positive: the share of history items with the same first genre, and the median
    hours between the history item and the target, per recency bucket (slot 1 = most recent).
    """
    from edgerec.data.registry import load
    from edgerec.data.samples import build_dicycle

    ds = load("ml-100k")
    s = build_dicycle(ds, max_len=200, item_features=["genre"])
    sp = s.splits["test"]
    pos = np.flatnonzero(sp.label == 1)
    b = s.make_batch(sp, pos)
    genre = s.item_feats["genre"]
    target_genre = genre[b["item"].numpy()][:, None]  # (U, 1)
    hist_genre = b["hist_genre"].numpy()  # (U, 200), most recent last
    mask = b["hist_mask"].numpy()
    gap_h = (b["ts"].numpy()[:, None] - b["hist_ts"].numpy()) / 3600.0
    out = {}
    for lo, hi in buckets:
        cols = slice(200 - hi, 200 - lo + 1)
        m = mask[:, cols]
        out[f"slots {lo}-{hi}"] = {
            "same_genre_share": float((hist_genre[:, cols] == target_genre)[m].mean()),
            "median_hours_before_target": float(np.median(gap_h[:, cols][m])),
            "users_with_slots": int(m.any(1).sum()),
        }
    # the same for a random catalogue item: the base rate a genre match has to beat
    rng = np.random.default_rng(0)
    rand_genre = genre[rng.integers(1, s.spec.oov_item, len(pos))][:, None]
    out["random item vs slots 1-50"] = float((hist_genre[:, 150:] == rand_genre)[mask[:, 150:]].mean())
    return out


def main(argv=None) -> dict:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--lens", default="50,200")
    a.add_argument("--seeds", default="1,2,3")
    a.add_argument("--out", default=str(ROOT / "bench" / "results" / "ctr_ml100k_diagnose.json"))
    args = a.parse_args(argv)
    ledger = read_ledger(ROOT / "results" / "ledger.jsonl")
    report = {"benchmark": "ctr_diagnose", "git": git_commit(), "machine": machine_info(), "rows": [],
              "recency": recency_analysis()}
    print(report["recency"], flush=True)
    for L in [int(x) for x in args.lens.split(",")]:
        for seed in [int(x) for x in args.seeds.split(",")]:
            preds, pop_auc, samples, pop_samples = {}, {}, None, None
            for model in MODELS_:
                run = find_run(ledger, model, L, seed)
                meta, state = load_state(run["run_dir"])
                cfg = experiment_from_dict(meta["experiment"])
                if samples is None:
                    samples = build_samples(cfg)
                    pop_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval_negatives="popularity"))
                    pop_samples = build_samples(pop_cfg)
                net = MODELS[cfg.model](samples.spec, **cfg.model_args)
                net.load_state_dict(state)
                y, p, user = predict(net, samples, "test")
                preds[model] = (y, p, user)
                yp, pp, _ = predict(net, pop_samples, "test")
                pop_auc[model] = auc(yp, pp)
            y, _, user = preds["DIN"]
            row = {"L": L, "seed": seed, "test_auc": {m: auc(*preds[m][:2]) for m in MODELS_},
                   "popularity_negatives_test_auc": pop_auc,
                   "DIN_minus_DNN": paired_bootstrap(y, preds["DIN"][1], preds["DNN"][1], user),
                   "DNN_minus_LR": paired_bootstrap(y, preds["DNN"][1], preds["LR"][1], user)}
            print(row, flush=True)
            report["rows"].append(row)
    summary = {}
    for L in sorted({r["L"] for r in report["rows"]}):
        rows = [r for r in report["rows"] if r["L"] == L]
        summary[str(L)] = {
            "popularity_negatives_test_auc": {m: mean_std(r["popularity_negatives_test_auc"][m] for r in rows) for m in MODELS_},
            "DIN_minus_DNN_mean": mean_std(r["DIN_minus_DNN"]["diff"] for r in rows),
            "seeds_with_DIN_minus_DNN_ci_above_0": sum(r["DIN_minus_DNN"]["ci95"][0] > 0 for r in rows),
        }
    report["summary"] = summary
    write_json_atomic(args.out, report)
    print(summary)
    return report


if __name__ == "__main__":
    main()
