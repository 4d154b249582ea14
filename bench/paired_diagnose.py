"""Where does one CTR model lose to another? A paired, low-noise re-evaluation of trained runs.

The DiCycle protocol scores each held-out positive against ONE random negative, so on a small test
split (Instacart: 1,186 users) a model's test AUC carries two kinds of noise: which negative was
drawn, and which users are in the split. This script takes saved runs (same seeds, same samples)
and, for each test positive, scores `--negatives` fresh uniform negatives (the protocol's sampler:
never an item the user has interacted with; its own RNG, identical for every model of a seed):

  * GAUC_K         mean over positives of P(score(pos) > score(neg)): the negative-draw noise gone;
  * AUC_K          the same scores pooled over users (the benchmark's AUC, with K negatives each);
  * by segment     --partition repeat: "repeat" positives (the target item is in the user's last
                   L behaviours) vs "new" ones; --partition session: "in-session" positives (the
                   user's latest behaviour is at most --session-hours before the target) vs "later";
                   each against the same negatives;
  * paired gaps    model A - model B per seed, with a 95 % bootstrap interval over test users.

Also reports how the history looks in time at the test target (the share of behaviours at gap 0,
i.e. in the same rebuilt order on Instacart), since that is what a continuous-time model reads.

    python bench/paired_diagnose.py --runs DIN=runs/bench/DIN_instacart \\
        --runs COUPA=runs/bench/COUPA_instacart_lr1e-2 --out bench/results/diagnose_instacart.json

Each --runs value is a folder of runs, one per seed (<stamp>-seed<k>), or RESULT.json#LABEL (the
run_dir of every run of that model label in a bench/ctr.py result file); models are paired by seed. Nothing
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
from edgerec.train.metrics import auc  # noqa: E402
from edgerec.train.report import fmt_ms, mean_std  # noqa: E402
from bench.docs_tables import replace_block  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", action="append", required=True, metavar="NAME=FOLDER|NAME=RESULT.json#LABEL",
                   help="a model's runs, one per seed (repeatable; see above)")
    p.add_argument("--negatives", type=int, default=100, help="fresh negatives per test positive")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the test users")
    p.add_argument("--partition", default="repeat", choices=list(PARTITIONS), help="how positives are split")
    p.add_argument("--session-hours", type=float, default=1.0, help="--partition session: the session gap")
    p.add_argument("--split", default="test", choices=["valid", "test"],
                   help="which held-out split to re-score (valid: to check a finding before acting on it)")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--pairs-with", default="", metavar="NAME,NAME",
                   help="only the gaps of every model against these (default: every pair)")
    p.add_argument("--docs-key", default="", help="also write the table into docs/results.md under this key")
    return p.parse_args(argv)


# partition -> (name of the True side, name of the False side, what it means)
PARTITIONS = {
    "repeat": ("repeat", "new", "the target item is among the user's last L behaviours"),
    "session": ("in-session", "later", "the user's latest behaviour is at most --session-hours before the target"),
}


def seed_runs(source: str) -> dict[int, Path]:
    """seed -> run directory, from a folder of <stamp>-seed<k> runs or from RESULT.json#LABEL."""
    if "#" in source:
        path, label = source.split("#", 1)
        runs = {r["seed"]: Path(r["run_dir"]) for r in json.loads(Path(path).read_text())["runs"]
                if r["model"] == label and r.get("run_dir")}
        if not runs:
            raise SystemExit(f"{path}: no run of model {label!r} with a run_dir")
        return runs
    runs = {}
    for d in sorted(Path(source).iterdir()):
        if d.is_dir() and "-seed" in d.name and (d / "model.safetensors").exists():
            runs[int(d.name.rsplit("-seed", 1)[1])] = d  # the newest run of a seed wins
    if not runs:
        raise SystemExit(f"{source}: no run directories (<stamp>-seed<k>/model.safetensors) found")
    return runs


@torch.no_grad()
def score(model, samples, split: Split, batch_size: int = 8192) -> np.ndarray:
    model.eval()
    out = [model(samples.make_batch(split, np.arange(lo, min(lo + batch_size, len(split)))))["y_pred"].numpy()
           for lo in range(0, len(split), batch_size)]
    return np.concatenate(out)


def expanded_split(samples, K: int, seed: int, split: str = "test") -> tuple[Split, Split]:
    """The split's positives and K fresh negatives for each (negatives laid out positive-major)."""
    held = samples.splits[split]
    pos = held.subset(np.flatnonzero(held.label == 1))
    rng = np.random.default_rng([seed, 4242])
    neg = pos.subset(np.repeat(np.arange(len(pos)), K))
    neg.item = samples._eval_neg_sampler.sample(neg, rng)  # the run's evaluation sampler (own_history, uniform_unseen)
    neg.label = np.zeros(len(neg), np.float32)
    return pos, neg


def history_stats(samples, pos: Split, session_hours: float) -> dict[str, np.ndarray]:
    """Per positive: target among the last L behaviours; latest behaviour within the session gap;
    share of the last L behaviours at the target's own timestamp."""
    L = samples.spec.max_len
    repeat, session, gap0 = np.zeros(len(pos), bool), np.zeros(len(pos), bool), np.zeros(len(pos))
    for i in range(len(pos)):
        lo = max(pos.hist_start[i], pos.hist_end[i] - L)
        items = samples.store_item[lo:pos.hist_end[i]]
        ts = samples.store_ts[lo:pos.hist_end[i]]
        repeat[i] = pos.item[i] in items
        session[i] = len(ts) > 0 and pos.ts[i] - ts.max() <= session_hours * 3600
        gap0[i] = (ts == pos.ts[i]).mean() if len(ts) else 0.0
    return {"repeat": repeat, "session": session, "gap0": gap0}


def per_positive_auc(s_pos: np.ndarray, s_neg: np.ndarray) -> np.ndarray:
    """(P,) share of a positive's K negatives it outranks (ties count half)."""
    K = len(s_neg) // len(s_pos)
    neg = s_neg.reshape(len(s_pos), K)
    return ((s_pos[:, None] > neg).mean(1) + 0.5 * (s_pos[:, None] == neg).mean(1))


def boot_ci(x: np.ndarray, B: int, rng: np.random.Generator) -> list[float]:
    idx = rng.integers(0, len(x), (B, len(x)))
    means = x[idx].mean(1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")


def main(argv=None) -> dict:
    a = parse_args(argv)
    models = {}
    for spec in a.runs:
        name, _, source = spec.partition("=")
        models[name] = seed_runs(source)
    seeds = sorted(set.intersection(*(set(r) for r in models.values())))
    if not seeds:
        raise SystemExit("the --runs share no seed: models are compared seed by seed")
    names = list(models)
    yes, no, meaning = PARTITIONS[a.partition]
    report = {"benchmark": "paired_diagnose", "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "git": git_commit(), "machine": machine_info(), "negatives": a.negatives, "seeds": seeds,
              "split": a.split, "partition": a.partition, "segments": [yes, no], "segment_meaning": meaning,
              "session_hours": a.session_hours,
              "runs": {n: {s: str(models[n][s]) for s in seeds} for n in names}, "per_seed": [], "summary": {}}
    rng = np.random.default_rng(0)
    per_model = {n: {"all": [], yes: [], no: [], "protocol": [], "pooled_auc": []} for n in names}
    refs = [r for r in a.pairs_with.split(",") if r]
    if set(refs) - set(names):
        raise SystemExit(f"--pairs-with {sorted(set(refs) - set(names))}: not among the --runs names {names}")
    gaps = {f"{x} - {y}": [] for i, x in enumerate(names) for y in names[i + 1:] if not refs or x in refs or y in refs}
    pooled_gaps = {k: [] for k in gaps}
    for seed in seeds:
        auc_pp, row = {}, {"seed": seed}
        samples = pos = neg = seg = None
        cache: dict = {}  # models of one seed built on the same data share one sample set
        for n in names:
            cfg, model, s = load_run(models[n][seed], sample_cache=cache)
            if samples is None:
                samples = s
                pos, neg = expanded_split(samples, a.negatives, seed, a.split)
                stats = history_stats(samples, pos, a.session_hours)
                seg = stats[a.partition]
                row.update(positives=len(pos), share=float(seg.mean()),
                           gap0_share_of_history=float(stats["gap0"].mean()))
            elif not np.array_equal(s.splits[a.split].item, samples.splits[a.split].item):
                raise SystemExit(f"{models[n][seed]}: different {a.split} samples than {names[0]} for seed {seed}")
            s_pos, s_neg = score(model, samples, pos), score(model, samples, neg)
            auc_pp[n] = per_positive_auc(s_pos, s_neg)
            per_model[n]["pooled_auc"].append(float(auc(np.r_[np.ones(len(s_pos)), np.zeros(len(s_neg))],
                                                        np.r_[s_pos, s_neg])))
            held = samples.splits[a.split]
            y = score(model, samples, held)
            per_model[n]["protocol"].append(float(per_positive_auc(y[held.label == 1], y[held.label == 0]).mean()))
            for name, m in (("all", np.ones(len(seg), bool)), (yes, seg), (no, ~seg)):
                per_model[n][name].append(_mean(auc_pp[n][m]))
            row[n] = {k: v[-1] for k, v in per_model[n].items()}
        for key in gaps:
            x, y_ = key.split(" - ")
            d = auc_pp[x] - auc_pp[y_]
            gaps[key].append(float(d.mean()))
            pooled_gaps[key].append(per_model[x]["pooled_auc"][-1] - per_model[y_]["pooled_auc"][-1])
            row[f"gap {key}"] = {"mean": float(d.mean()), "ci95": boot_ci(d, a.bootstrap, rng),
                                 yes: _mean(d[seg]), no: _mean(d[~seg])}
        report["per_seed"].append(row)
        print(json.dumps(row, indent=1), flush=True)

    def ms(v):
        v = [x for x in v if not np.isnan(x)]
        return dict(zip(("mean", "std"), mean_std(v))) if v else {"mean": float("nan"), "std": float("nan")}
    report["summary"] = {n: {k: ms(v) for k, v in per_model[n].items()} for n in names}
    report["summary"]["gaps"] = {k: ms(v) for k, v in gaps.items()}
    report["summary"]["pooled_auc_gaps"] = {k: ms(v) for k, v in pooled_gaps.items()}
    write_json_atomic(Path(a.out), report)
    table = markdown(report, names)
    print(table)
    if a.docs_key:
        replace_block(a.docs_key, table + f"\n\nMeasured {report['started'][:10]}, git {report['git']}, {a.split} split, "
                      f"seeds {seeds}, {a.negatives} fresh uniform negatives per positive; mean ± sample std over seeds; "
                      f"raw numbers (with per-seed 95 % bootstrap intervals) in {Path(a.out).resolve().relative_to(ROOT)}.")
    return report


def markdown(report: dict, names: list[str]) -> str:
    s, K, (yes, no) = report["summary"], report["negatives"], report["segments"]
    f = lambda d: fmt_ms(d["mean"], d["std"])  # noqa: E731
    rows = [f"| model ({report['split']} split) | AUC, {K} negatives | GAUC, the protocol's 1 negative "
            f"| GAUC, {K} negatives | GAUC, {yes} positives | GAUC, {no} positives |", "|---|---|---|---|---|---|"]
    for n in names:
        rows.append(f"| {n} | {f(s[n]['pooled_auc'])} | {f(s[n]['protocol'])} | {f(s[n]['all'])} | {f(s[n][yes])} "
                    f"| {f(s[n][no])} |")
    share = np.mean([r["share"] for r in report["per_seed"]])
    gap0 = np.mean([r["gap0_share_of_history"] for r in report["per_seed"]])
    rows += ["", f"{yes.capitalize()} positives ({report['segment_meaning']}"
             + (f", {report['session_hours']:g} h" if report["partition"] == "session" else "")
             + f"): {share:.1%} of the {report['split']} positives. Behaviours at the target's own timestamp: "
             f"{gap0:.1%} of the history, on average.",
             "", f"| paired gap ({K} negatives) | AUC: mean ± std over seeds | GAUC: mean ± std over seeds | {yes} | {no} "
             f"| GAUC per seed: 95 % bootstrap interval over users |", "|---|---|---|---|---|---|"]
    for k, v in s["gaps"].items():
        per = [r[f"gap {k}"] for r in report["per_seed"]]
        cis = ", ".join(f"[{g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}]" for g in per)
        pg = s["pooled_auc_gaps"][k]
        rows.append(f"| {k} | {pg['mean']:+.4f} ± {pg['std']:.4f} | {v['mean']:+.4f} ± {v['std']:.4f} "
                    f"| {np.nanmean([g[yes] for g in per]):+.4f} "
                    f"| {np.nanmean([g[no] for g in per]):+.4f} | {cis} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
