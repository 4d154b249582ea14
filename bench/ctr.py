"""CTR baseline benchmark: LR, DNN, DIN on MovieLens-100K (DiCycle protocol) at L = 50 and 200.

    python bench/ctr.py                      # full run: 3 models x 2 lengths x 3 seeds
    python bench/ctr.py --quick              # smoke run: tiny simulator, 1 seed, 1 epoch
    edgerec bench ctr --models DIN --lens 50 --seeds 1

Writes bench/results/ctr_<dataset>.json (every run plus mean and std over seeds, the machine, the
git commit) after each run, so an interrupted benchmark keeps what it finished, and rewrites the
table between the markers in docs/results.md. Hyper-parameters come from configs/ctr.yaml
(<MODEL>_ml100k experiments); nothing is tuned on the test split: the epoch is chosen on validation.
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

from bench.docs_tables import replace_block  # noqa: E402
from edgerec.io import write_json_atomic  # noqa: E402
from edgerec.models.dicycle import ABLATIONS, EXTENSIONS  # noqa: E402

VARIANTS = {**ABLATIONS, **EXTENSIONS}
from edgerec.train.config import load_experiment  # noqa: E402
from edgerec.train.experiment import run_experiment  # noqa: E402
from edgerec.train.ledger import git_commit, machine_info  # noqa: E402
from edgerec.train.report import aggregate, markdown_table  # noqa: E402

METRICS = ["AUC", "GAUC", "logloss"]
# the repeat / new-item pair subsets (edgerec.train.metrics), tabled when every run has them
SUBSET_METRICS = ["GAUC:repeat", "GAUC:new"]


def _metrics(runs: list[dict]) -> list[str]:
    return METRICS + [m for m in SUBSET_METRICS if runs and all(m in r["test"] for r in runs)]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k", help="dataset id, also an imported NAME (it overrides the "
                   "experiments' own dataset; experiments are <MODEL>_<suffix> in --config)")
    p.add_argument("--suffix", default="ml100k", help="experiment id suffix in configs/ctr.yaml")
    p.add_argument("--models", default="LR,DNN,DIN")
    p.add_argument("--lens", default="50,200", help="history lengths L")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--config", default=str(ROOT / "configs" / "ctr.yaml"))
    p.add_argument("--out", help="result JSON (default bench/results/ctr_<dataset>.json)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite the table in docs/results.md")
    p.add_argument("--quick", action="store_true", help="smoke run: o2o-sim:tiny, 1 seed, 1 epoch, L=10")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--ablations", default="", help="DiCycle ablations to add (comma list of "
                   f"{', '.join(VARIANTS)}, or 'all' for the ablations); each runs DiCycle_<suffix> "
                   "with its overrides")
    p.add_argument("--resume", action="store_true", help="keep the runs already in --out and skip them")
    p.add_argument("--seed-major", action="store_true",
                   help="run seed 1 of every model, then seed 2, ... (instead of all seeds of one model first)")
    p.add_argument("--merge", default="", metavar="A.json,B.json",
                   help="train nothing: collect the runs of --models/ablations x --lens x --seeds from these "
                        "result files (first file wins) into --out and render its tables")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    models, lens, seeds = [m for m in a.models.split(",") if m], [int(x) for x in a.lens.split(",")], [int(x) for x in a.seeds.split(",")]
    overrides = list(a.set)
    if not a.quick:  # the experiments' own dataset gives way to --dataset (e.g. an imported log: --suffix mine)
        overrides.insert(0, f"dataset={a.dataset}")
    if a.quick:
        a.suffix, lens, seeds = "test", [10], [1]
        overrides += ["train.epochs=1"]
    name = "tiny" if a.quick else a.dataset.replace("-", "").replace(":", "_")
    default_out = (ROOT / "runs" / "bench" / "ctr_quick.json") if a.quick else ROOT / "bench" / "results" / f"ctr_{name}.json"
    out = Path(a.out) if a.out else default_out
    runs_dir = ROOT / "runs" / "bench"
    report = {
        "benchmark": "ctr", "dataset": "o2o-sim:tiny" if a.quick else a.dataset, "protocol": None,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git": git_commit(),
        "machine": machine_info(), "seeds": seeds, "lens": lens, "models": models, "config": a.config,
        "overrides": overrides, "complete": False, "runs": [], "summary": [],
    }
    for o in overrides:  # the runs' thread count, not this process's default
        if o.startswith("train.threads="):
            report["machine"]["torch_threads"] = int(o.split("=", 1)[1])
    ablations = list(ABLATIONS) if a.ablations == "all" else [x for x in a.ablations.split(",") if x]
    unknown = [x for x in ablations if x not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown ablation(s) {unknown}; choose from {list(VARIANTS)} or 'all' (= the ablations)")
    variants = [(m, m, []) for m in models] + [(f"DiCycle {x}", "DiCycle", VARIANTS[x]) for x in ablations]
    report["models"] = [v[0] for v in variants]
    if variants:  # the experiments' protocol (dicycle or impression), also for a --merge or a finished --resume
        report["protocol"] = load_experiment(a.config, f"{variants[0][1]}_{a.suffix}", overrides).protocol
    if a.resume and out.exists():
        report["runs"] = json.loads(out.read_text())["runs"]
    if a.merge:
        wanted = {(label, L, s) for label, _, _ in variants for L in lens for s in seeds}
        for src in a.merge.split(","):
            if not Path(src).exists():
                print(f"merge: {src} does not exist (not run yet); skipped")
                continue
            have = {(r["model"], r["L"], r["seed"]) for r in report["runs"]}
            for r in json.loads(Path(src).read_text())["runs"]:
                key = (r["model"], r["L"], r["seed"])
                if key in wanted and key not in have:
                    report["runs"].append({**r, "source": Path(src).name})
        report["merged_from"] = a.merge.split(",")
        variants = []  # nothing to train
    done = {(r["model"], r["L"], r["seed"]) for r in report["runs"]}
    cache: dict = {}
    t0 = time.time()
    # seed-major order: an interrupted benchmark has every variant at the same number of seeds
    plan = [(L, v, seed) for L in lens for seed in seeds for v in variants] if a.seed_major else \
           [(L, v, seed) for L in lens for v in variants for seed in seeds]
    for L, (label, model, extra), seed in plan:
        if (label, L, seed) in done:
            continue
        cfg = load_experiment(a.config, f"{model}_{a.suffix}", [
            *overrides, *extra, f"data.max_len={L}", f"train.seed={seed}", "train.progress=false",
            f"output_dir={runs_dir}", f"ledger={ROOT / 'results' / 'ledger.jsonl'}"])
        report["protocol"] = cfg.protocol
        if cache and next(iter(cache))[-1] != seed:  # samples depend on (L, seed): keep one set in memory
            cache.clear()
        r = run_experiment(cfg, sample_cache=cache)
        report["runs"].append({"model": label, "L": L, "seed": seed, "best_epoch": r.best_epoch,
                               "epochs_run": r.epochs_run, "train_seconds": r.train_seconds,
                               "valid": r.valid, "test": r.test, "config_hash": r.config_hash,
                               "device": cfg.train.device,
                               "run_dir": r.run_dir})
        report["summary"] = summarize(report["runs"])
        write_json_atomic(out, report)
    report["summary"] = summarize(report["runs"])
    report["complete"] = True
    report["wall_seconds"] = round(time.time() - t0, 1)
    write_json_atomic(out, report)
    table = markdown(report)
    print(table)
    ablation = ablation_markdown(report)
    if ablation:
        print(ablation)
    if not a.no_docs and not a.quick:
        update_docs(out.stem, table, report)  # the docs block is named after the result file
        if ablation:
            replace_block(f"ablation_{out.stem.removeprefix('ctr_')}",
                          ablation + f"\n\nRaw runs: bench/results/{out.name}; git {report['git']}.")
    return report


def ablation_markdown(report: dict, metric: str = "AUC") -> str:
    """The paper's Table 3: each removal's test AUC and its cost against full DiCycle, paired by seed."""
    import numpy as np

    full = {(r["L"], r["seed"]): r["test"][metric] for r in report["runs"] if r["model"] == "DiCycle"}
    labels = [m for m in report["models"] if m.startswith("DiCycle ")]
    rows = []
    for L in sorted({r["L"] for r in report["runs"]}):
        for label in ["DiCycle", *labels]:
            got = [(r["seed"], r["test"][metric]) for r in report["runs"] if r["model"] == label and r["L"] == L]
            if not got:
                continue
            vals = np.array([v for _, v in got])
            diffs = np.array([v - full[(L, s)] for s, v in got if (L, s) in full])
            def ms(x: np.ndarray, sign: str = "") -> str:
                return f"{x.mean():{sign}.4f} ± {x.std(ddof=1):.4f}" if len(x) > 1 else f"{x.mean():{sign}.4f} (1 seed)"

            cost = "" if label == "DiCycle" else (ms(diffs, "+") if len(diffs) else "n/a")
            rows.append(f"| {label} | {L} | {len(vals)} | {ms(vals)} | {cost} |")
    if len(rows) <= 1 or not labels:
        return ""
    head = [f"| variant | L | seeds | test {metric} | change vs DiCycle (paired by seed) |", "|---|---|---|---|---|"]
    return "\n".join(head + rows)


def summarize(runs: list[dict]) -> list[dict]:
    metrics = _metrics(runs)
    flat = [{"model": r["model"], "L": r["L"], **{m: r["test"][m] for m in metrics},
             "train_seconds": r["train_seconds"], "epochs_run": r["epochs_run"]} for r in runs]
    return aggregate(flat, ["model", "L"], [*metrics, "train_seconds", "epochs_run"])


def markdown(report: dict) -> str:
    rows = []
    metrics = _metrics(report["runs"])
    order = {m: i for i, m in enumerate(report.get("models", []))}
    for s in sorted(report["summary"], key=lambda s: (s["L"], order.get(s["model"], len(order)))):
        row = {"model": s["model"], "L": s["L"], "seeds": s["n"]}
        one = s["n"] < 2  # no spread from one seed: say so instead of printing ± 0
        for m in metrics:
            row[m] = f"{s[m]:.4f} (1 seed)" if one else f"{s[m]:.4f} ± {s[m + '_std']:.4f}"
        row["epochs"] = f"{s['epochs_run']:.1f}"
        row["train s"] = f"{s['train_seconds']:.0f}" if one else f"{s['train_seconds']:.0f} ± {s['train_seconds_std']:.0f}"
        rows.append(row)
    cols = ["model", "L", "seeds", *metrics, "epochs", "train s"]
    return markdown_table(rows, cols, ["model", "L", "seeds", *(f"test {m}" for m in metrics),
                                       "epochs run", "train time (s)"])


def update_docs(key: str, table: str, report: dict) -> None:
    m = report["machine"]
    replace_block(key, f"{table}\n\n"
                  f"Measured {report['started'][:10]} on {m['cpu_count']} CPU cores ({m['processor']}), "
                  + ("torch threads per run as recorded in the source files"  # a merge trains nothing itself
                     if report.get("merged_from") else f"{m['torch_threads']} torch threads")
                  + f", torch {m['torch']}; git {report['git']}; "
                  f"seeds {report['seeds']}; mean ± sample std over seeds; raw runs in bench/results/{key}.json"
                  + (f" (merged from {', '.join(report['merged_from'])}; each run keeps its source)"
                     if report.get("merged_from") else "") + ".")


if __name__ == "__main__":
    main()
