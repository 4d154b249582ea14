"""Tables for the evaluation-integrity re-measurement (docs/results.md, "Honest samples").

Trains nothing. Reads the re-measured runs (bench/ctr.py output on the fixed sample builders:
causal history cut, leave-last-out by moment, `own_history` negatives) and the committed runs from
before the fix, and renders per dataset:
  * the new table: every model's test metrics, mean ± sample std over seeds;
  * paired differences between every two models, seed by seed (the same seed = the same samples);
  * old against new test AUC for each model that has both, paired by seed;
  * two model-free floors on the same test samples (the repeat pairs are where a shortcut would
    show): score a candidate by how recently, or how often, it occurs in the last L behaviours.

    python bench/integrity.py            # rewrite the integrity_* blocks in docs/results.md
    python bench/integrity.py --print    # print them only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.docs_tables import replace_block  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# how these runs were scheduled (say it with the numbers: it changes what their train times mean)
NOTE = ("Two single-thread benchmark processes shared the 2 cores, so the recorded train times are not speed "
        "measurements.")
METRICS = ["AUC", "GAUC", "GAUC:repeat", "GAUC:new", "logloss"]

# dataset -> (new result files with an optional label override, old result files (first wins), title)
DATASETS = {
    "ml100k": dict(
        title="MovieLens-100K", dataset="ml-100k", repeats=False,
        new=[("ctr_ml100k_v2.json", None), ("ctr_ml100k_v2_seq.json", None)],
        old=["ctr_ml100k_time.json", "ctr_ml100k_coupa.json"]),
    "instacart": dict(
        title="Instacart", dataset="instacart", repeats=True,
        new=[("ctr_instacart_v2.json", None), ("ctr_instacart_v2_nosame.json", "COUPA w/o pp_same_item"),
             ("ctr_instacart_v2_seq.json", None)],
        old=["ctr_instacart_all.json", ("ctr_instacart_coupa_nodecay.json", "COUPA w/o pp_same_item")],
        uniform="ctr_instacart_v2_uniform.json"),  # the same fixed samples with the literature's sampler
    "o2osim": dict(
        title="o2o-sim (DiCycle protocol)", dataset="o2o-sim", repeats=True,
        new=[("ctr_o2osim_v2.json", None), ("ctr_o2osim_v2_more.json", None)],
        old=["ctr_o2osim_time.json"]),
}


def _runs(files: list, L: int = 50) -> dict[str, dict[int, dict]]:
    """model label -> seed -> test metrics, from result files (the first file that has a run wins)."""
    out: dict[str, dict[int, dict]] = {}
    for entry in files:
        name, label = (entry, None) if isinstance(entry, str) else entry
        path = RESULTS / name
        if not path.exists():
            continue
        for r in json.loads(path.read_text())["runs"]:
            if r["L"] != L:
                continue
            out.setdefault(label or r["model"], {}).setdefault(r["seed"], r["test"])
    return out


def _ms(x: list[float], sign: str = "") -> str:
    a = np.asarray(x, dtype=float)
    a = a[~np.isnan(a)]
    if len(a) == 0:
        return "–"
    return f"{a.mean():{sign}.4f} ± {a.std(ddof=1):.4f}" if len(a) > 1 else f"{a.mean():{sign}.4f} (1 seed)"


def floors(dataset: str, seeds: list[int], L: int = 50) -> dict[str, dict[int, dict]]:
    """Model-free scorers on each seed's test split: recency and count of the candidate in the last L
    behaviours (absent = lowest score). Same samples as the models' (build_dicycle is seeded)."""
    from edgerec.data.registry import load
    from edgerec.data.samples import build_dicycle
    from edgerec.train.metrics import evaluate

    ds, out = load(dataset), {"floor: recency in last 50": {}, "floor: count in last 50": {}}
    for seed in seeds:
        s = build_dicycle(ds, max_len=L, seed=seed)
        sp = s.splits["test"]
        b = s.make_batch(sp, np.arange(len(sp)))
        hit = (b["hist_item"].numpy() == b["item"].numpy()[:, None]) & b["hist_mask"].numpy()  # (N, L)
        last = np.where(hit, b["hist_ts"].numpy(), -1).max(1)  # (N,) latest occurrence, -1 if none
        recency = np.where(last >= 0, -(sp.ts - last).astype(float), -np.inf)
        for name, score in (("floor: recency in last 50", recency), ("floor: count in last 50", hit.sum(1))):
            score = np.where(np.isinf(score), -1e18, score).astype(float)
            out[name][seed] = evaluate([m for m in METRICS if m != "logloss"], sp.label, score, sp.user,
                                       sp.metric_subsets())
    return out


def render(key: str) -> str:
    d = DATASETS[key]
    new, old = _runs(d["new"]), _runs(d["old"])
    if not new:
        return f"No re-measured runs for {d['title']} yet (bench/results/{d['new'][0][0]})."
    if d["repeats"]:  # where a repeat shortcut could exist, show what it alone scores
        new = {**new, **floors(d["dataset"], sorted({s for runs in new.values() for s in runs}))}
    metrics = [m for m in METRICS if any(m in t and not np.isnan(t[m]) for runs in new.values() for t in runs.values())]
    lines = [f"| model | seeds | {' | '.join('test ' + m for m in metrics)} |", "|---|---|" + "---|" * len(metrics)]
    for model, runs in new.items():
        cells = [_ms([t.get(m, np.nan) for t in runs.values()]) for m in metrics]
        lines.append(f"| {model} | {len(runs)} | {' | '.join(cells)} |")
    models = [m for m in new if not m.startswith("floor")]
    if len(models) > 1:
        lines += ["", "Paired by seed (the same seed draws the same samples): each later row's model against each "
                  "earlier one, per-seed differences, mean ± std:", "",
                  "| comparison | seeds | Δ test AUC | Δ test GAUC:repeat | seeds with Δ AUC > 0 |", "|---|---|---|---|---|"]
        for i, a_ in enumerate(models):
            for b_ in models[i + 1:]:
                seeds = sorted(set(new[a_]) & set(new[b_]))
                dauc = [new[b_][s]["AUC"] - new[a_][s]["AUC"] for s in seeds]
                drep = [new[b_][s].get("GAUC:repeat", np.nan) - new[a_][s].get("GAUC:repeat", np.nan) for s in seeds]
                lines.append(f"| {b_} − {a_} | {len(seeds)} | {_ms(dauc, '+')} | {_ms(drep, '+')} | "
                             f"{sum(x > 0 for x in dauc)} / {len(seeds)} |")
    both = [m for m in new if m in old]
    if both:
        lines += ["", "Old (before 2026-12: history cut by position in the store, the single last line as the test "
                  "target, `uniform_unseen` negatives) against new, test AUC, paired by seed number:", "",
                  "| model | seeds | old test AUC | new test AUC | change (paired) |", "|---|---|---|---|---|"]
        for model in both:
            paired = sorted(set(old[model]) & set(new[model]))
            o = [old[model][s]["AUC"] for s in paired]
            n = [new[model][s]["AUC"] for s in paired]
            lines.append(f"| {model} | {len(paired)} | {_ms(o)} | {_ms(n)} | "
                         f"{_ms([b - a for a, b in zip(o, n)], '+')} |")
    uni = _runs([d["uniform"]]) if d.get("uniform") else {}
    if uni:
        lines += ["", "Only the sampler changed (the fixed cut and split, `data.negatives: uniform_unseen` against the "
                  "default `own_history`), test AUC and repeat-pair GAUC, paired by seed:", "",
                  "| model | seeds | AUC uniform_unseen | AUC own_history | GAUC:repeat uniform_unseen | "
                  "GAUC:repeat own_history |", "|---|---|---|---|---|---|"]
        for model, runs in uni.items():
            seeds = sorted(set(runs) & set(new.get(model, {})))
            if seeds:
                cells = [_ms([src[x].get(m, np.nan) for x in seeds])
                         for m in ("AUC", "GAUC:repeat") for src in (runs, new[model])]
                lines.append(f"| {model} | {len(seeds)} | {' | '.join(cells)} |")
    present = [f if isinstance(f, str) else f[0] for f in d["new"]]
    present = [f for f in present if (RESULTS / f).exists()]
    first = json.loads((RESULTS / present[0]).read_text())
    m = first["machine"]
    lines += ["", f"Raw runs: {', '.join('bench/results/' + f for f in present)}; git {first['git']}; "
              f"{m['cpu_count']} CPU cores ({m['processor']}), {m.get('torch_threads', '?')} torch thread per run, "
              f"torch {m['torch']}; started {first['started'][:10]}. {NOTE}"]
    return "\n".join(lines)


TRUTH_NEW = RESULTS / "coupa_o2osim_v2.json"  # bench/coupa.py on the fixed code (impression protocol)
TRUTH_OLD = RESULTS / "coupa_o2osim_merged.json"


def render_truth() -> str | None:
    """COUPA against the position baselines on o2o-sim's ground truth, re-measured: the table, each
    variant's cost against COUPA in relevance AUC paired by seed, and old against new."""
    if not TRUTH_NEW.exists():
        return None
    from bench.coupa import markdown

    new = json.loads(TRUTH_NEW.read_text())
    old = json.loads(TRUTH_OLD.read_text()) if TRUTH_OLD.exists() else {"runs": []}

    def by_seed(report, variant, key=lambda r: r["truth"]["relevance_auc"]):
        return {r["seed"]: key(r) for r in report["runs"] if r["variant"] == variant}

    lines = [markdown(new), "", "Each variant against COUPA, relevance AUC (truth), paired by seed:", "",
             "| variant | seeds | Δ relevance AUC vs COUPA | seeds ahead of COUPA |", "|---|---|---|---|"]
    coupa = by_seed(new, "COUPA")
    for v in new["variants"]:
        if v == "COUPA":
            continue
        other = by_seed(new, v)
        seeds = sorted(set(coupa) & set(other))
        if seeds:
            d = [other[k] - coupa[k] for k in seeds]
            lines.append(f"| {v} | {len(seeds)} | {_ms(d, '+')} | {sum(x > 0 for x in d)} / {len(seeds)} |")
    lines += ["", "Old (before 2026-12) against new, relevance AUC, paired by seed:", "",
              "| variant | seeds | old | new | change (paired) |", "|---|---|---|---|---|"]
    for v in new["variants"]:
        a, b = by_seed(old, v), by_seed(new, v)
        seeds = sorted(set(a) & set(b))
        if seeds:
            lines.append(f"| {v} | {len(seeds)} | {_ms([a[k] for k in seeds])} | {_ms([b[k] for k in seeds])} | "
                         f"{_ms([b[k] - a[k] for k in seeds], '+')} |")
    lines += ["", f"Raw runs: {TRUTH_NEW.relative_to(ROOT)} (merged from {', '.join(new.get('merged_from', []))}); "
                  f"git {new.get('git')}; {new['machine']['cpu_count']} CPU cores, 1 torch thread per run. {NOTE}"]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--print", action="store_true", help="print the tables, do not touch docs/results.md")
    a = p.parse_args(argv)
    for key in DATASETS:
        block = render(key)
        print(f"## {DATASETS[key]['title']}\n{block}\n")
        if not a.print:
            replace_block(f"integrity_{key}", block)
    truth = render_truth()
    if truth is not None:
        print(f"## o2o-sim truth metrics\n{truth}\n")
        if not a.print:
            replace_block("integrity_coupa_truth", truth)


if __name__ == "__main__":
    main()
