"""Where does one CTR model lose to another? A paired, low-noise re-evaluation of trained runs.

The DiCycle protocol scores each held-out positive against ONE random negative, so on a small test
split (Instacart: 1,186 users) a model's test AUC carries two kinds of noise: which negative was
drawn, and which users are in the split. This script takes saved runs (same seeds, same samples)
and, for each test positive, scores `--negatives` fresh uniform negatives (the protocol's sampler:
never an item the user has interacted with; its own RNG, identical for every model of a seed):

  * GAUC_K         mean over positives of P(score(pos) > score(neg)): the negative-draw noise gone;
  * by segment     "repeat" positives (the target item is in the user's last L behaviours) and
                   "new" positives, each against the same negatives;
  * paired gaps    model A - model B per seed, with a 95 % bootstrap interval over test users.

Also reports how the history looks in time at the test target (the share of behaviours at gap 0,
i.e. in the same rebuilt order on Instacart), since that is what a continuous-time model reads.

    python bench/paired_diagnose.py --runs DIN=runs/bench/DIN_instacart \\
        --runs COUPA=runs/bench/COUPA_instacart_lr1e-2 --out bench/results/diagnose_instacart.json

Each --runs folder holds one run per seed (<stamp>-seed<k>); models are paired by seed. Nothing
here picks a model; `--split valid` checks on the validation split a finding made on test, before
any change is chosen (on validation) because of it. With one positive per user, the per-positive
pairwise AUC reported here is the GAUC.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgerec.data.samples import Split  # noqa: E402
from edgerec.io import write_json_atomic  # noqa: E402
from edgerec.train.experiment import load_run  # noqa: E402
from edgerec.train.ledger import git_commit, machine_info  # noqa: E402
from edgerec.train.report import fmt_ms, mean_std  # noqa: E402
from bench.docs_tables import replace_block  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", action="append", required=True, metavar="NAME=FOLDER",
                   help="a model's runs: FOLDER holds <stamp>-seed<k> run directories (repeatable)")
    p.add_argument("--negatives", type=int, default=100, help="fresh negatives per test positive")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the test users")
    p.add_argument("--split", default="test", choices=["valid", "test"],
                   help="which held-out split to re-score (valid: to check a finding before acting on it)")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--docs-key", default="", help="also write the table into docs/results.md under this key")
    return p.parse_args(argv)


def seed_runs(folder: Path) -> dict[int, Path]:
    runs = {}
    for d in sorted(folder.iterdir()):
        if d.is_dir() and "-seed" in d.name and (d / "model.safetensors").exists():
            runs[int(d.name.rsplit("-seed", 1)[1])] = d  # the newest run of a seed wins
    if not runs:
        raise SystemExit(f"{folder}: no run directories (<stamp>-seed<k>/model.safetensors) found")
    return runs


@torch.no_grad()
def score(model, samples, split: Split, batch_size: int = 8192) -> np.ndarray:
    model.eval()
    out = [model(samples.make_batch(split, np.arange(lo, min(lo + batch_size, len(split)))))["y_pred"].numpy()
           for lo in range(0, len(split), batch_size)]
    return np.concatenate(out)


def expanded_split(samples, K: int, seed: int, split: str = "test") -> tuple[Split, Split]:
    """The split's positives and K fresh negatives for each (negatives laid out positive-major)."""
    test = samples.splits[split]
    pos = test.subset(np.flatnonzero(test.label == 1))
    rng = np.random.default_rng([seed, 4242])
    rep = np.repeat(np.arange(len(pos)), K)
    neg = pos.subset(rep)
    neg.item = samples._neg_sampler.sample(neg.user, rng)
    neg.label = np.zeros(len(neg), np.float32)
    return pos, neg


def history_stats(samples, pos: Split) -> dict[str, np.ndarray]:
    """Per test positive: is the target in the last L behaviours, share of them at gap 0."""
    L = samples.spec.max_len
    repeat = np.zeros(len(pos), bool)
    gap0 = np.zeros(len(pos))
    for i in range(len(pos)):
        lo = max(pos.hist_start[i], pos.hist_end[i] - L)
        items = samples.store_item[lo:pos.hist_end[i]]
        ts = samples.store_ts[lo:pos.hist_end[i]]
        repeat[i] = pos.item[i] in items
        gap0[i] = (ts == pos.ts[i]).mean() if len(ts) else 0.0
    return {"repeat": repeat, "gap0": gap0}


def per_positive_auc(s_pos: np.ndarray, s_neg: np.ndarray) -> np.ndarray:
    """(P,) share of a positive's K negatives it outranks (ties count half)."""
    K = len(s_neg) // len(s_pos)
    neg = s_neg.reshape(len(s_pos), K)
    return ((s_pos[:, None] > neg).mean(1) + 0.5 * (s_pos[:, None] == neg).mean(1))


def boot_ci(x: np.ndarray, B: int, rng: np.random.Generator) -> list[float]:
    idx = rng.integers(0, len(x), (B, len(x)))
    means = x[idx].mean(1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def main(argv=None) -> dict:
    a = parse_args(argv)
    models = {}
    for spec in a.runs:
        name, _, folder = spec.partition("=")
        models[name] = seed_runs(Path(folder))
    seeds = sorted(set.intersection(*(set(r) for r in models.values())))
    if not seeds:
        raise SystemExit("the --runs folders share no seed: models are compared seed by seed")
    names = list(models)
    report = {"benchmark": "ctr_diagnose", "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "git": git_commit(), "machine": machine_info(), "negatives": a.negatives, "seeds": seeds,
              "split": a.split,
              "runs": {n: {s: str(models[n][s]) for s in seeds} for n in names}, "per_seed": [], "summary": {}}
    rng = np.random.default_rng(0)
    per_model = {n: {"all": [], "repeat": [], "new": [], "protocol": []} for n in names}
    gaps = {f"{x} - {y}": [] for i, x in enumerate(names) for y in names[i + 1:]}
    for seed in seeds:
        auc_pp, row = {}, {"seed": seed}
        samples = pos = neg = stats = None
        for n in names:
            cfg, model, s = load_run(models[n][seed])
            if samples is None:
                samples = s
                pos, neg = expanded_split(samples, a.negatives, seed, a.split)
                stats = history_stats(samples, pos)
                row.update(test_positives=len(pos), repeat_share=float(stats["repeat"].mean()),
                           gap0_share_of_history=float(stats["gap0"].mean()))
            elif not np.array_equal(s.splits[a.split].item, samples.splits[a.split].item):
                raise SystemExit(f"{models[n][seed]}: different test samples than {names[0]} for seed {seed}")
            auc_pp[n] = per_positive_auc(score(model, samples, pos), score(model, samples, neg))
            prot = samples.splits[a.split]
            y_prot = score(model, samples, prot)
            per_model[n]["protocol"].append(float(per_positive_auc(y_prot[prot.label == 1], y_prot[prot.label == 0]).mean()))
            for seg, m in (("all", slice(None)), ("repeat", stats["repeat"]), ("new", ~stats["repeat"])):
                per_model[n][seg].append(float(auc_pp[n][m].mean()))
            row[n] = {seg: per_model[n][seg][-1] for seg in ("all", "repeat", "new", "protocol")}
        for key in gaps:
            x, y = key.split(" - ")
            d = auc_pp[x] - auc_pp[y]
            gaps[key].append(float(d.mean()))
            row[f"gap {key}"] = {"mean": float(d.mean()), "ci95": boot_ci(d, a.bootstrap, rng),
                                 "repeat": float(d[stats["repeat"]].mean()), "new": float(d[~stats["repeat"]].mean())}
        report["per_seed"].append(row)
        print(json.dumps(row, indent=1))

    def ms(v):
        return dict(zip(("mean", "std"), mean_std(v)))
    report["summary"] = {n: {seg: ms(v) for seg, v in per_model[n].items()} for n in names}
    report["summary"]["gaps"] = {k: ms(v) for k, v in gaps.items()}
    write_json_atomic(Path(a.out), report)
    table = markdown(report, names)
    print(table)
    if a.docs_key:
        replace_block(a.docs_key, table + f"\n\nMeasured {report['started'][:10]}, git {report['git']}, seeds {seeds}, "
                      f"{a.negatives} fresh uniform negatives per test positive; mean ± sample std over seeds; "
                      f"raw numbers (with per-seed 95 % bootstrap intervals) in {Path(a.out).resolve().relative_to(ROOT)}.")
    return report


def markdown(report: dict, names: list[str]) -> str:
    s, K = report["summary"], report["negatives"]
    f = lambda d: fmt_ms(d["mean"], d["std"])  # noqa: E731
    rows = [f"| model ({report['split']} split) | GAUC, the protocol's 1 negative | GAUC, {K} negatives "
            f"| GAUC, repeat positives | GAUC, new positives |",
            "|---|---|---|---|---|"]
    for n in names:
        rows.append(f"| {n} | {f(s[n]['protocol'])} | {f(s[n]['all'])} | {f(s[n]['repeat'])} | {f(s[n]['new'])} |")
    share = np.mean([r["repeat_share"] for r in report["per_seed"]])
    gap0 = np.mean([r["gap0_share_of_history"] for r in report["per_seed"]])
    rows += ["", f"Repeat positives (the target item is among the user's last L behaviours): {share:.1%} of the "
             f"{report['split']} positives. Behaviours at gap 0 (the target's own timestamp): {gap0:.1%} of the history, on average.",
             "", f"| paired gap ({K} negatives) | mean ± std over seeds | repeat | new | per seed: 95 % bootstrap interval over users |",
             "|---|---|---|---|---|"]
    for k, v in s["gaps"].items():
        per = [r[f"gap {k}"] for r in report["per_seed"]]
        cis = ", ".join(f"[{g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}]" for g in per)
        rows.append(f"| {k} | {v['mean']:+.4f} ± {v['std']:.4f} | {np.mean([g['repeat'] for g in per]):+.4f} "
                    f"| {np.mean([g['new'] for g in per]):+.4f} | {cis} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
