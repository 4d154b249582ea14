"""Tables in docs/results.md, rendered from bench/results/*.json.

Each table sits between `<!-- KEY:start -->` and `<!-- KEY:end -->`; `replace_block` rewrites only
that block (or appends it). The bench scripts call their renderer after writing their JSON;
`python bench/docs_tables.py` re-renders every table from the JSON files that exist.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgerec.io import write_text_atomic  # noqa: E402

DOCS = ROOT / "docs" / "results.md"
RESULTS = ROOT / "bench" / "results"


def replace_block(key: str, block: str, path: Path = DOCS) -> None:
    text = path.read_text() if path.exists() else ""
    new = f"<!-- {key}:start -->\n{block}\n<!-- {key}:end -->"
    pattern = re.compile(rf"<!-- {key}:start -->.*?<!-- {key}:end -->", re.S)
    text = pattern.sub(lambda _: new, text) if pattern.search(text) else text.rstrip() + "\n\n" + new + "\n"
    write_text_atomic(path, text)


def render_sweep(r: dict, block: str = "lr_sweep", path: Path = DOCS) -> None:
    """Validation sweep table (bench/tune_lr.py); older files name the value `lr`."""
    param = r.get("param", "train.lr")
    rows = [f"| model | {param} | best epoch / run | valid AUC | valid GAUC | valid logloss | chosen |",
            "|---|---|---|---|---|---|---|"]
    for x in r["runs"]:
        v, value = x["valid"], x.get("value", x.get("lr"))
        chosen = "✓" if r["chosen"].get(x["model"]) == value else ""
        rows.append(f"| {x['model']} | {value:g} | {x['best_epoch']} / {x['epochs_run']} | {v['AUC']:.4f} | "
                    f"{v['GAUC']:.4f} | {v['logloss']:.4f} | {chosen} |")
    extra = f", fixed: {', '.join(r['overrides'])}" if r.get("overrides") else ""
    # runs record their own date and commit (a resumed sweep spans sessions); older files only the report's
    dates = sorted({x.get("measured", r["started"][:10]) for x in r["runs"]}) or [r["started"][:10]]
    gits = list(dict.fromkeys(x.get("git", r["git"]) for x in r["runs"])) or [r["git"]]
    replace_block(block, "\n".join(rows) + f"\n\nMeasured {', '.join(dates)}, git {', '.join(gits)}, seed {r['seed']}, "
                  f"L = {r['L']}, validation split only{extra}.", path)


def render_simulator(s: dict) -> None:
    rows = [f"| size | users | items | days | exposures | clicks | CTR | seconds (best of {s['repeat']}) | events/s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for x in s["rows"]:
        rows.append(f"| {x['size']} | {x['users']:,} | {x['items']:,} | {x['days']} | {x['exposures']:,} | "
                    f"{x['clicks']:,} | {x['ctr']:.4f} | {x['seconds_best']:.2f} | {x['events_per_second']:,} |")
    replace_block("simulator", "\n".join(rows) + f"\n\n`python bench/simulator.py`, seed 0, "
                  f"{s['machine']['cpu_count']} cores, git {s['git']}.")


def render_throughput(t: dict) -> None:
    rows = ["| model | L | train samples/s | train ms/step | inference samples/s | peak RSS (MB) | params |",
            "|---|---|---|---|---|---|---|"]
    for x in t["rows"]:
        rows.append(f"| {x['model']} | {x['L']} | {x['train_samples_per_s']:,} | {x['train_ms_per_step']} | "
                    f"{x['infer_samples_per_s']:,} | {x['peak_rss_mb']:,} | {x['params']:,} |")
    m = t["machine"]
    checks = "; ".join(f"{k}: {v}" for k, v in t["checks"].items())
    replace_block("throughput", "\n".join(rows) + f"\n\n`python bench/throughput.py`: batch 1024, {m['torch_threads']} "
                  f"torch threads, {m['cpu_count']} cores, 15 timed steps after 3 warm-up steps, ml-100k batches; "
                  f"git {t['git']}. {checks}.")


def render_train_speed(t: dict) -> None:
    """bench/train_speed.py: speed per (model, precision, code) and where the time goes, by op."""
    rows = ["| model | precision | code | train samples/s | ms/step | inference samples/s | batch build ms | "
            "peak RSS (MB) |", "|---|---|---|---|---|---|---|---|"]
    for x in t["rows"]:
        rows.append(f"| {x['model']} | {x['precision']} | {x['code']} | {x['train_samples_per_s']:,} | "
                    f"{x['train_ms_per_step']} | {x['infer_samples_per_s']:,} | {x['batch_build_ms']} | "
                    f"{x['peak_rss_mb']:,} |")
    prof = ["", "Where a training step's time goes (torch.profiler, self CPU time, top ops; share of the step):", "",
            "| model | precision | code | ms/step (profiled) | top ops |", "|---|---|---|---|---|"]
    for x in t["rows"]:
        ops = ", ".join(f"{o['op'].removeprefix('aten::')} {o['share']:.0%}" for o in x["profile_top_ops"][:7])
        prof.append(f"| {x['model']} | {x['precision']} | {x['code']} | {x['profile_total_ms_per_step']} | {ops} |")
    m = t["machine"]
    r0 = t["rows"][0]
    replace_block("train_speed", "\n".join(rows + prof) + f"\n\n`python bench/train_speed.py"
                  f"{' --baseline ' + t['baseline'] if t.get('baseline') else ''}`: {t['experiments']}, {t['dataset']} "
                  f"({t['protocol']}), batch {r0['batch_size']}, {r0['threads']} torch threads on {m['cpu_count']} "
                  f"cores ({m.get('cpu_model')}; flags {', '.join(m.get('bf16_flags', [])) or 'none'}), median of "
                  f"{r0['steps']} timed steps after 2 warm-up steps, batches built before timing; git {t['git']}.")


def render_peer(t: dict) -> None:
    """bench/peer.py: edgerec next to RecBole, mean (and spread) over seeds per framework, model, precision."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in t["rows"]:
        groups.setdefault((r["model"], r["framework"], r.get("precision", "fp32")), []).append(r)

    def cell(rs: list[dict], key: str, fmt: str = ",.0f") -> str:
        v = [float(r[key]) if not isinstance(r[key], list) else sum(r[key]) / len(r[key]) for r in rs]
        mean = format(statistics.mean(v), fmt)
        return mean if len(v) < 2 else f"{mean} ± {format(statistics.stdev(v), fmt)}"

    rows = ["| model | framework | precision | seeds | rows/s | positives/s | epoch s | test AUC | test eval s | "
            "peak RSS (MB) | params |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (model, fw, prec), rs in groups.items():
        rows.append(f"| {model} | {fw} | {prec} | {len(rs)} | {cell(rs, 'rows_per_s')} | {cell(rs, 'positives_per_s')} | "
                    f"{cell(rs, 'epoch_seconds', '.1f')} | {cell(rs, 'test_auc', '.4f')} | {cell(rs, 'eval_seconds', '.1f')} | "
                    f"{cell(rs, 'peak_rss_mb')} | "
                    f"{rs[0]['params']:,} |")
    m = t["machine"]
    ratios = "; ".join(f"{k}: {v}x" for k, v in t["ratios"].items())
    replace_block("peer", "\n".join(rows) + f"\n\n`python bench/peer.py` (seeds {t['seeds']}): {t['dataset']}; "
                  f"{t['protocol']}; {t['epochs']} epoch(s); {m['torch_threads']} torch threads on {m['cpu_count']} "
                  f"cores ({m.get('cpu_model')}), one run at a time; git {t['git']}. Mean ± sample std over seeds. "
                  f"Speed ratios (means): {ratios}.")


RENDERERS = {"simulator.json": render_simulator, "throughput.json": render_throughput,
             "train_speed.json": render_train_speed, "peer.json": render_peer}

if __name__ == "__main__":
    for name, render in RENDERERS.items():
        if (RESULTS / name).exists():
            render(json.loads((RESULTS / name).read_text()))
            print(f"rendered {name}")
    for path in sorted(RESULTS.glob("*_sweep_*.json")):  # bench/tune_lr.py: block named after the file
        render_sweep(json.loads(path.read_text()), path.stem)
        print(f"rendered {path.name}")
